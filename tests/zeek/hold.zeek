##! Test harness for a Zeek reading a capture with the headbits package: processing waits until
##! the test says go (HeadBits::Test::go, sent once its subscriber has its ack, so no head is
##! published before anyone listens); at the end of the file Zeek says so on the test topic
##! (after the package has published the heads still pending) and keeps running until the test
##! stops it.

module HeadBits::Test;

export {
	global go: event();
	global file_done: event(path: string);
}

event zeek_init()
	{
	Cluster::subscribe("headbits/test");
	suspend_processing();
	}

event go()
	{
	continue_processing();
	}

event Pcap::file_done(path: string) &priority=-10
	{
	Cluster::publish("headbits/test", file_done, path);
	}
