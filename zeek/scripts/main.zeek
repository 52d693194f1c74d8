##! Collect the first N payload bytes of each direction of every TCP and UDP connection and
##! publish one HeadBits::payload_head event per connection, when both directions have N bytes
##! or when the connection ends.
##!
##! TCP on Zeek >= 7.1 uses the stream-event analyzer and disables it once both heads are full,
##! so the cost does not grow with the connection's length; older Zeek falls back to
##! tcp_contents (which cannot be switched off per connection: handlers return early). UDP uses
##! udp_contents and concatenates the first datagrams. The payload is base64-encoded because
##! Broker's JSON writer does not escape raw bytes.

module HeadBits;

export {
	## Bytes collected per direction (the models use any prefix up to 64).
	option head_bytes: count = 64;

	## Topic of the HeadBits::payload_head events.
	option topic = "headbits/heads";

	## Only connections whose responder port is in this set (empty: every port).
	option include_ports: set[port] = set();
	## Connections whose responder port is in this set are skipped.
	option exclude_ports: set[port] = set();
	## Only connections with an endpoint in one of these subnets (empty: every address).
	option include_subnets: set[subnet] = set();
	## Connections with an endpoint in one of these subnets are skipped.
	option exclude_subnets: set[subnet] = set();

	## Fraction of eligible connections published, 0.0 to 1.0.
	option sample_rate = 1.0;

	## Start a WebSocket server (Cluster::listen_websocket on Zeek >= 7.2,
	## Broker::listen_websocket before).
	option listen_websocket = T;
	option websocket_address = 127.0.0.1;
	option websocket_port = 27759/tcp;
	## TLS certificate and key for the WebSocket server (Zeek >= 7.2; both empty: no TLS).
	## Before 7.2 the WebSocket server uses Broker's TLS settings (Broker::ssl_*,
	## Broker::disable_ssl).
	option websocket_cert_file = "";
	option websocket_key_file = "";

	## Start a native Broker listener (Broker::listen) for Broker's Python bindings. TLS uses
	## Broker's own settings: redef Broker::ssl_cafile, Broker::ssl_certificate,
	## Broker::ssl_keyfile, or Broker::disable_ssl.
	option listen_broker = F;
	option broker_address = "127.0.0.1";
	option broker_port = 9999/tcp;

	## One connection's heads; its argument order is the wire format (zeek/README.md).
	global payload_head: event(uid: string, id: conn_id, transport: transport_proto,
	    services: set[string], orig_head: string, resp_head: string, orig_seen: count,
	    resp_seen: count, orig_gap: bool, resp_gap: bool, ts: double);
}

type Direction: record {
	head: string &default="";
	seen: count &default=0;
	gap: bool &default=F;
};

type State: record {
	orig: Direction &default=Direction();
	resp: Direction &default=Direction();
	published: bool &default=F;
};

## Per-connection state: two strings of at most head_bytes each, freed in
## connection_state_remove.
global states: table[string] of State;

function in_subnets(a: addr, subnets: set[subnet]): bool
	{
	for ( s in subnets )
		{
		if ( a in s )
			return T;
		}
	return F;
	}

function eligible(c: connection): bool
	{
	local p = c$id$resp_p;
	if ( |include_ports| > 0 && p !in include_ports )
		return F;
	if ( p in exclude_ports )
		return F;
	if ( |include_subnets| > 0 && ! in_subnets(c$id$orig_h, include_subnets)
	     && ! in_subnets(c$id$resp_h, include_subnets) )
		return F;
	if ( in_subnets(c$id$orig_h, exclude_subnets) || in_subnets(c$id$resp_h, exclude_subnets) )
		return F;
	if ( sample_rate < 1.0 && rand(1000000) >= double_to_count(sample_rate * 1000000.0) )
		return F;
	return T;
	}

function direction_full(d: Direction): bool
	{
	return d$gap || |d$head| >= head_bytes;
	}

function publish_heads(c: connection, s: State)
	{
	if ( s$published )
		return;
	s$published = T;
	local transport = get_port_transport_proto(c$id$resp_p);
@if ( Version::number >= 70100 )
	Cluster::publish(topic, payload_head, c$uid, c$id, transport, c$service,
	    encode_base64(s$orig$head), encode_base64(s$resp$head), s$orig$seen, s$resp$seen,
	    s$orig$gap, s$resp$gap, time_to_double(c$start_time));
@else
	Broker::publish(topic, payload_head, c$uid, c$id, transport, c$service,
	    encode_base64(s$orig$head), encode_base64(s$resp$head), s$orig$seen, s$resp$seen,
	    s$orig$gap, s$resp$gap, time_to_double(c$start_time));
@endif
	}

## Start of stream not seen (no SYN from that side in the history): the head would not start
## at byte 0, so it is flagged as a gap from the first delivery on.
function stream_start_missing(c: connection, is_orig: bool): bool
	{
	if ( get_port_transport_proto(c$id$resp_p) != tcp )
		return F;
	if ( is_orig )
		return /S/ !in c$history;
	return /[hs]/ !in c$history;
	}

## Append a chunk to one direction; returns T once both directions are complete.
function add_bytes(c: connection, is_orig: bool, data: string): bool
	{
	if ( c$uid !in states )
		{
		if ( ! eligible(c) )
			return T;
		states[c$uid] = State();
		}
	local s = states[c$uid];
	local d = is_orig ? s$orig : s$resp;
	if ( d$seen == 0 && |data| > 0 && stream_start_missing(c, is_orig) )
		d$gap = T;
	d$seen += |data|;
	if ( ! d$gap && |d$head| < head_bytes )
		d$head += data[:head_bytes - |d$head|];
	if ( direction_full(s$orig) && direction_full(s$resp) )
		{
		publish_heads(c, s);
		return T;
		}
	return F;
	}

function mark_gap(c: connection, is_orig: bool)
	{
	if ( c$uid !in states )
		return;
	local s = states[c$uid];
	if ( is_orig )
		s$orig$gap = T;
	else
		s$resp$gap = T;
	}

@if ( Version::number >= 70100 )

event stream_deliver(c: connection, is_orig: bool, data: string)
	{
	if ( add_bytes(c, is_orig, data) )
		disable_analyzer(c$id, current_analyzer(), F);
	}

event stream_undelivered(c: connection, is_orig: bool, seq: count, len: count)
	{
	mark_gap(c, is_orig);
	}

@else

redef tcp_content_deliver_all_orig = T;
redef tcp_content_deliver_all_resp = T;

event tcp_contents(c: connection, is_orig: bool, seq: count, contents: string)
	{
	if ( c$uid in states && states[c$uid]$published )
		return;
	add_bytes(c, is_orig, contents);
	}

event content_gap(c: connection, is_orig: bool, seq: count, length: count)
	{
	mark_gap(c, is_orig);
	}

@endif

redef udp_content_deliver_all_orig = T;
redef udp_content_deliver_all_resp = T;

event udp_contents(u: connection, is_orig: bool, contents: string)
	{
	if ( u$uid in states && states[u$uid]$published )
		return;
	add_bytes(u, is_orig, contents);
	}

event connection_state_remove(c: connection)
	{
	if ( c$uid !in states )
		return;
	local s = states[c$uid];
	if ( s$orig$seen > 0 || s$resp$seen > 0 )
		publish_heads(c, s);
	delete states[c$uid];
	}

function all_tcp_ports(): set[port]
	{
	local ports: set[port] = set();
	local n = 1;
	while ( n < 65536 )
		{
		add ports[count_to_port(n, tcp)];
		++n;
		}
	return ports;
	}

event zeek_init()
	{
@if ( Version::number >= 70100 )
	Analyzer::register_for_ports(Analyzer::ANALYZER_STREAM_EVENT, all_tcp_ports());
@endif

	if ( listen_websocket )
		{
@if ( Version::number >= 70200 )
		local tls = Cluster::WebSocketTLSOptions();
		if ( websocket_cert_file != "" )
			{
			tls$cert_file = websocket_cert_file;
			tls$key_file = websocket_key_file;
			}
		Cluster::listen_websocket(Cluster::WebSocketServerOptions($listen_addr=websocket_address,
		    $listen_port=websocket_port, $tls_options=tls));
@else
		Broker::listen_websocket(cat(websocket_address), websocket_port);
@endif
		}

	if ( listen_broker )
		Broker::listen(broker_address, broker_port);
	}
