##! Collect the first N payload bytes of each direction of every TCP and UDP connection and
##! publish one HeadBits::payload_head event per connection, when both directions have N bytes
##! or when the connection ends.
##!
##! TCP uses the stream-event analyzer, attached to every TCP connection with payload by a
##! signature (heads.sig) rather than by port registration: registering all 65,536 ports costs
##! most of a second at start-up and misses expected connections such as FTP data channels. The
##! analyzer is disabled once both heads are complete, or a bounded number of chunks after one
##! head is complete, so the cost of a connection does not grow with its length. UDP uses
##! udp_contents, which Zeek raises for every datagram (there is no per-connection switch):
##! once a connection's heads are published the handler returns after reading one field of the
##! connection record.
##! The payload is base64-encoded because Broker's JSON writer does not escape raw bytes.

@load base/frameworks/cluster
@load base/frameworks/notice
@load base/misc/version
# For its data channels, which get a head too (see ftp_reply below).
@load base/protocols/ftp
@load-sigs ./heads.sig

module HeadBits;

export {
	## Bytes collected per direction (the models use any prefix up to 64).
	option head_bytes: count = 64;

	## Once one direction's head is complete, the stream-event analyzer stays on for at most
	## this many further chunks (of either direction) while the other head fills; then it is
	## turned off and the other head is published as far as it got. This bounds the script
	## events of a lopsided connection (a download after a 20-byte request) to
	## 2 * head_bytes + lopsided_chunks chunks.
	option lopsided_chunks: count = 16;

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

	## Fraction of eligible connections published, 0.0 to 1.0; drawn once per connection.
	option sample_rate = 1.0;

	## Skip the outer flow of a tunnel (VXLAN, Geneve, GTP-U, Teredo, AYIYA, ...) once Zeek
	## has decapsulated a connection inside it: its head would be tunnel framing, and the inner
	## connections get heads of their own.
	option skip_tunnels = T;

	## Start a WebSocket server (Cluster::listen_websocket). Only a standalone Zeek listens:
	## in a cluster, connect the collector to the manager's WebSocket server (zeekctl
	## UseWebSocket = 1, 127.0.0.1:27759), or set listen_in_cluster on the node that listens.
	option listen_websocket = T;
	option websocket_address = 127.0.0.1;
	option websocket_port = 27759/tcp;
	## TLS certificate and key for the WebSocket server (both empty: no TLS).
	option websocket_cert_file = "";
	option websocket_key_file = "";

	## Start a native Broker listener (Broker::listen) for Broker's Python bindings. TLS uses
	## Broker's own settings: redef Broker::ssl_cafile, Broker::ssl_certificate,
	## Broker::ssl_keyfile, or Broker::disable_ssl.
	option listen_broker = F;
	option broker_address = "127.0.0.1";
	option broker_port = 9999/tcp;

	## Start the listeners above on this cluster node too (a cluster normally funnels through
	## the manager's own WebSocket server, so nodes do not listen unless asked).
	option listen_in_cluster = F;

	## Topic on which the scorer publishes HeadBits::alert events back to the sensors.
	option alert_topic = "headbits/alerts";

	## One connection's heads; its argument order is the wire format (zeek/README.md).
	global payload_head: event(uid: string, id: conn_id, transport: transport_proto,
	    services: set[string], orig_head: string, resp_head: string, orig_seen: count,
	    resp_seen: count, orig_gap: bool, resp_gap: bool, ts: double);

	## Called just before a connection's heads are published; break to publish nothing for it
	## (a filter of your own), or read the heads (the package's tests do).
	global publish_policy: hook(c: connection, orig_head: string, resp_head: string,
	    orig_gap: bool, resp_gap: bool);

	## A scorer alert for connection `uid`: `reasons` is the alert's comma-joined reasons,
	## "anomalous-bytes" (reconstruction error over the threshold) and/or
	## "protocol-mismatch" (the model recognises a protocol other than the expected one).
	global alert: event(uid: string, orig_h: addr, orig_p: port, resp_h: addr, resp_p: port,
	    reasons: string, score: double, threshold: double, predicted: string,
	    expected: string, model: string);

	redef enum Notice::Type += {
		## The scorer found the connection's first bytes unlike the traffic it learnt
		## ("anomalous-bytes").
		Anomalous_Protocol,
		## The scorer recognised a protocol other than the one the port or Zeek's analyzers
		## suggest ("protocol-mismatch").
		Novel_Protocol,
	};
}

type Direction: record {
	head: string &default="";
	seen: count &default=0;
	## Published gap flag: a hole before the head was complete, or the stream start unseen.
	gap: bool &default=F;
	## The head can grow no more: it has head_bytes bytes, or it stopped at a hole.
	full: bool &default=F;
};

type State: record {
	orig: Direction;
	resp: Direction;
	## A TCP connection (stream-event analyzer); else UDP (udp_contents).
	tcp: bool;
	## Chunks delivered since the first head was complete.
	chunks_after_full: count &default=0;
	## Published, or never collected (ineligible, or a tunnel's outer flow): later deliveries
	## are ignored.
	done: bool &default=F;
};

# The state lives on the connection record, so the hot path reads one field instead of
# hashing the uid into a table on every delivery, and Zeek frees it with the connection.
redef record connection += {
	headbits: State &optional;
};

## Every connection with a state (it is on the connection) that is not done: a capture file's
## end publishes them (Pcap::file_done), as Zeek has no way to list its connections.
global collecting: table[string] of conn_id;

## The state of every connection that is done: one shared record, so that publishing leaves
## nothing of the heads behind for the rest of the connection's life (a long UDP flow's).
global done_state = State($orig=Direction(), $resp=Direction(), $tcp=F, $done=T);

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
	if ( |exclude_ports| > 0 && p in exclude_ports )
		return F;
	if ( |include_subnets| > 0 && ! ( in_subnets(c$id$orig_h, include_subnets) )
	     && ! ( in_subnets(c$id$resp_h, include_subnets) ) )
		return F;
	if ( |exclude_subnets| > 0 && ( in_subnets(c$id$orig_h, exclude_subnets)
	     || in_subnets(c$id$resp_h, exclude_subnets) ) )
		return F;
	if ( sample_rate < 1.0 && rand(1000000) >= double_to_count(sample_rate * 1000000.0) )
		return F;
	return T;
	}

## A connection seen for the first time (no state yet): eligibility (and the sample draw) is
## decided once and for all. Returns the connection's state (done_state if it is not collected).
function start_collecting(c: connection, tcp: bool): State
	{
	if ( skip_tunnels && c?$tunnel && |c$tunnel| > 0 )
		{
		local outer = c$tunnel[|c$tunnel| - 1];
		if ( outer?$uid && connection_exists(outer$cid) )
			{
			# Dropped unpublished, whatever it collected so far.
			lookup_connection(outer$cid)$headbits = done_state;
			delete collecting[outer$uid];
			}
		}
	# The size checks spare the call to eligible() in the default configuration.
	if ( ( |include_ports| > 0 || |exclude_ports| > 0 || |include_subnets| > 0
	       || |exclude_subnets| > 0 || sample_rate < 1.0 ) && ! eligible(c) )
		{
		c$headbits = done_state;
		return done_state;
		}
	local s = State($orig=Direction(), $resp=Direction(), $tcp=tcp);
	c$headbits = s;
	collecting[c$uid] = c$id;
	return s;
	}

function publish_heads(c: connection, s: State)
	{
	c$headbits = done_state;
	delete collecting[c$uid];
	if ( hook publish_policy(c, s$orig$head, s$resp$head, s$orig$gap, s$resp$gap) )
		Cluster::publish(topic, payload_head, c$uid, c$id, s$tcp ? tcp : udp, c$service,
		    encode_base64(s$orig$head), encode_base64(s$resp$head), s$orig$seen,
		    s$resp$seen, s$orig$gap, s$resp$gap, time_to_double(c$start_time));
	}

## Append a chunk to one direction of a connection that is collecting; returns T once the
## heads are published (no more chunks wanted). The hot path of the package: written with as
## few calls and lookups as it can.
function add_chunk(c: connection, s: State, is_orig: bool, data: string): bool
	{
	local d = is_orig ? s$orig : s$resp;
	# Start of a TCP stream not seen (no SYN from that side in the history): the head is kept
	# but flagged, as it may not start at byte 0.
	if ( d$seen == 0 && s$tcp && |data| > 0
	     && ( is_orig ? /S/ !in c$history : /[hs]/ !in c$history ) )
		d$gap = T;
	d$seen += |data|;
	local was_full = s$orig$full || s$resp$full;
	if ( ! d$full )
		{
		d$head += data[:head_bytes - |d$head|];
		d$full = |d$head| >= head_bytes;
		}
	if ( s$orig$full && s$resp$full )
		{
		publish_heads(c, s);
		return T;
		}
	if ( was_full && ++s$chunks_after_full > lopsided_chunks )
		{
		publish_heads(c, s);
		return T;
		}
	return F;
	}

event stream_deliver(c: connection, is_orig: bool, data: string)
	{
	local s = c?$headbits ? c$headbits : start_collecting(c, T);
	if ( s$done || add_chunk(c, s, is_orig, data) )
		disable_analyzer(c$id, current_analyzer(), F);
	}

## A hole in one direction: its head ends here (flagged) unless it was already complete.
event stream_undelivered(c: connection, is_orig: bool, seq: count, len: count)
	{
	local s = c?$headbits ? c$headbits : start_collecting(c, T);
	if ( s$done )
		return;
	local d = is_orig ? s$orig : s$resp;
	if ( ! d$full )
		{
		d$gap = T;
		d$full = T;
		}
	if ( s$orig$full && s$resp$full )
		{
		publish_heads(c, s);
		disable_analyzer(c$id, current_analyzer(), F);
		}
	}

redef udp_content_deliver_all_orig = T;
redef udp_content_deliver_all_resp = T;

event udp_contents(u: connection, is_orig: bool, contents: string)
	{
	local s = u?$headbits ? u$headbits : start_collecting(u, F);
	# For the rest of a long flow's life, the field read and this test are all it costs.
	if ( ! s$done )
		add_chunk(u, s, is_orig, contents);
	}

## FTP data channels are expected connections: Zeek builds their analyzer tree from the
## scheduled FTP_DATA analyzer alone, so the signature never sees them. Schedule the
## stream-event analyzer beside it for every channel FTP announces.
event ftp_reply(c: connection, code: count, msg: string, cont_resp: bool) &priority=-10
	{
	if ( c?$ftp && c$ftp?$data_channel )
		{
		local chan = c$ftp$data_channel;
		Analyzer::schedule_analyzer(chan$orig_h, chan$resp_h, chan$resp_p,
		    Analyzer::ANALYZER_STREAM_EVENT, 5min);
		}
	}

event ftp_request(c: connection, command: string, arg: string) &priority=-10
	{
	if ( c?$ftp && c$ftp?$data_channel )
		{
		local chan = c$ftp$data_channel;
		Analyzer::schedule_analyzer(chan$orig_h, chan$resp_h, chan$resp_p,
		    Analyzer::ANALYZER_STREAM_EVENT, 5min);
		}
	}

event connection_state_remove(c: connection)
	{
	if ( ! c?$headbits )
		return;
	local s = c$headbits;
	if ( s$done )
		return;
	if ( s$orig$seen > 0 || s$resp$seen > 0 || s$orig$gap || s$resp$gap )
		publish_heads(c, s);
	else
		delete collecting[c$uid];
	}

## At the end of a capture file, publish the heads of every connection still collecting. Zeek
## would publish them in connection_state_remove while it shuts down, but it exits without
## draining its WebSocket and Broker queues, so events published then can be lost; and with a
## listener open Zeek keeps running after the file until it is told to stop.
event Pcap::file_done(path: string) &priority=10
	{
	local pending: vector of connection;
	for ( _, id in collecting )
		{
		if ( ! connection_exists(id) )
			next;
		local conn = lookup_connection(id);
		local s = conn$headbits;
		if ( s$orig$seen > 0 || s$resp$seen > 0 || s$orig$gap || s$resp$gap )
			pending += conn;
		}
	for ( _, c in pending )
		publish_heads(c, c$headbits);
	}

event HeadBits::alert(uid: string, orig_h: addr, orig_p: port, resp_h: addr, resp_p: port,
    reasons: string, score: double, threshold: double, predicted: string, expected: string,
    model: string)
	{
	local id = conn_id($orig_h=orig_h, $orig_p=orig_p, $resp_h=resp_h, $resp_p=resp_p);
	for ( _, reason in split_string(reasons, /,/) )
		{
		local note = reason == "protocol-mismatch" ? Novel_Protocol : Anomalous_Protocol;
		NOTICE([$note=note, $uid=uid, $id=id, $identifier=cat(uid, reason), $sub=model,
		    $msg=fmt("headbits %s: score %.4f, threshold %.4f; predicted %s, expected %s",
		        reason, score, threshold, predicted, expected)]);
		}
	}

function fail(what: string)
	{
	Reporter::fatal(fmt("headbits: %s; the heads would go nowhere. Change the address or port "
	    + "(HeadBits::*_address, HeadBits::*_port) or turn the listener off.", what));
	}

event zeek_init()
	{
@ifdef ( Cluster::CLUSTER_BACKEND_NONE )
	# Zeek >= 8.1: a standalone Zeek has no cluster backend by default, and Cluster::publish
	# then drops every event without a word.
	if ( Cluster::backend == Cluster::CLUSTER_BACKEND_NONE )
		Reporter::fatal("headbits: Zeek has no cluster backend (Cluster::CLUSTER_BACKEND_NONE), "
		    + "so HeadBits::payload_head events would go nowhere. Load one: "
		    + "@load policy/frameworks/cluster/backend/zeromq, or "
		    + "@load policy/frameworks/cluster/websocket/server for a standalone server.");
@endif

	Cluster::subscribe(alert_topic);

	local listens = ! Cluster::is_enabled() || listen_in_cluster;
	if ( listens && listen_websocket )
		{
		local tls = Cluster::WebSocketTLSOptions();
		if ( websocket_cert_file != "" )
			{
			tls$cert_file = websocket_cert_file;
			tls$key_file = websocket_key_file;
			}
@if ( Version::number >= 80000 )
		local options = Cluster::WebSocketServerOptions($listen_addr=websocket_address,
		    $listen_port=websocket_port, $tls_options=tls);
@else
		local options = Cluster::WebSocketServerOptions($listen_host=cat(websocket_address),
		    $listen_port=websocket_port, $tls_options=tls);
@endif
		if ( ! Cluster::listen_websocket(options) )
			fail(fmt("cannot listen for WebSocket clients on %s:%s", websocket_address,
			    websocket_port));
		}

	if ( listens && listen_broker )
		{
		if ( Broker::listen(broker_address, broker_port) == 0/tcp )
			fail(fmt("cannot listen for Broker peers on %s:%s", broker_address, broker_port));
		}
	}
