# A scorer alert for a connection becomes a HeadBits notice in notice.log with its uid.
#
# @TEST-EXEC: zeek -C -r $TRACES/get-gzip.pcap $PACKAGE %INPUT
# @TEST-EXEC: grep -q 'HeadBits::Anomalous_Protocol' notice.log
# @TEST-EXEC: grep -q 'HeadBits::Novel_Protocol' notice.log
# @TEST-EXEC: grep -q 'CHhAvVGS1DHFjwGM9' notice.log

redef HeadBits::listen_websocket = F;

event zeek_init()
	{
	local id = conn_id($orig_h=141.142.228.5, $orig_p=50153/tcp, $resp_h=54.243.118.187,
	    $resp_p=80/tcp);
	event HeadBits::alert("CHhAvVGS1DHFjwGM9", id, "anomaly", 0.9, 0.5, "http", "http",
	    "model/3");
	event HeadBits::alert("CHhAvVGS1DHFjwGM9", id, "protocol", 0.1, 0.5, "ssh", "http",
	    "model/3");
	}
