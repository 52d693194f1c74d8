# A scorer alert for a connection becomes a HeadBits notice in notice.log with its uid.
#
# @TEST-EXEC: zeek -C -r $TRACES/get-gzip.pcap $PACKAGE %INPUT
# @TEST-EXEC: grep -q 'HeadBits::Anomalous_Protocol' notice.log
# @TEST-EXEC: grep -q 'HeadBits::Novel_Protocol' notice.log
# @TEST-EXEC: grep -q 'CHhAvVGS1DHFjwGM9' notice.log

redef HeadBits::listen_websocket = F;

event zeek_init()
	{
	event HeadBits::alert("CHhAvVGS1DHFjwGM9", 141.142.228.5, 50153/tcp, 54.243.118.187,
	    80/tcp, "anomalous-bytes,protocol-mismatch", 0.9, 0.5, "ssh", "http", "model/3");
	}
