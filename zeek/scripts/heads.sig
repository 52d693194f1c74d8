# Attach the stream-event analyzer to every TCP connection as soon as either side sends a first
# payload byte. Zeek's protocol detection (PIA) buffers a connection's first bytes and replays
# them to an analyzer it enables, so the analyzer still sees each stream from its start.
signature headbits-tcp-payload {
	ip-proto == tcp
	payload /[\x00-\xff]/
	enable "stream_event"
}
