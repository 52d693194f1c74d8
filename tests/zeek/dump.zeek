##! Print every head the package publishes, one line each, fields separated by spaces (transport, orig_h,
##! orig_p, resp_h, resp_p, base64 orig head, base64 resp head, orig gap, resp gap), for
##! comparing many captures quickly without a subscriber. The live tests cover the wire.

redef HeadBits::listen_websocket = F;

hook HeadBits::publish_policy(c: connection, orig_head: string, resp_head: string,
    orig_gap: bool, resp_gap: bool)
	{
	print fmt("%s %s %d %s %d %s %s %s %s", get_port_transport_proto(c$id$resp_p),
	    c$id$orig_h, port_to_count(c$id$orig_p), c$id$resp_h, port_to_count(c$id$resp_p),
	    encode_base64(orig_head), encode_base64(resp_head), orig_gap, resp_gap);
	}
