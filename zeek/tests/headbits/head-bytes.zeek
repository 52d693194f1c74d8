# HeadBits::head_bytes bounds every head, and the policy hook can veto a publication.
#
# @TEST-EXEC: zeek -C -r $TRACES/get-gzip.pcap $PACKAGE %INPUT > out
# @TEST-EXEC: grep -q '^8, 8$' out

redef HeadBits::listen_websocket = F;
redef HeadBits::head_bytes = 8;

hook HeadBits::publish_policy(c: connection, orig_head: string, resp_head: string,
    orig_gap: bool, resp_gap: bool)
	{
	print |orig_head|, |resp_head|;
	}
