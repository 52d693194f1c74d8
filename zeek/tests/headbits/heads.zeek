# The heads of an HTTP and a DNS connection, as the publish_policy hook sees them just before
# they are published: TCP through the stream-event analyzer (attached by signature), UDP
# through udp_contents.
#
# @TEST-EXEC: zeek -C -r $TRACES/get-gzip.pcap $PACKAGE %INPUT > http.out
# @TEST-EXEC: grep -q '^tcp, 141.142.228.5, 54.243.118.187, 80/tcp, GET /gzip HTTP/1.1' http.out
# @TEST-EXEC: grep -q 'HTTP/1.1 200 OK\\x0d\\x0aServer: gunicorn/0.16.1\\x0d\\x0aDate: Mon, 18 Mar 2013, F, F$' http.out
# @TEST-EXEC: test $(wc -l < http.out) -eq 1
# @TEST-EXEC: zeek -C -r $TRACES/dns-caa.pcap $PACKAGE %INPUT > dns.out
# @TEST-EXEC: grep -q '^udp, .*, 53/udp, .*, F, F$' dns.out
# @TEST-EXEC: test $(wc -l < dns.out) -eq 1

redef HeadBits::listen_websocket = F;

hook HeadBits::publish_policy(c: connection, orig_head: string, resp_head: string,
    orig_gap: bool, resp_gap: bool)
	{
	print get_port_transport_proto(c$id$resp_p), c$id$orig_h, c$id$resp_h, c$id$resp_p,
	    orig_head, resp_head, orig_gap, resp_gap;
	}
