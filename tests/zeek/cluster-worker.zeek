##! A cluster worker of the tests: it reads its capture only once it has joined the manager, so
##! no head is published before the manager can forward it, and it keeps running after the end
##! of the file (the test stops it) because Zeek exits without draining its Broker queues.

redef exit_only_after_terminate = T;

event zeek_init()
	{
	suspend_processing();
	}

event Cluster::node_up(name: string, id: string)
	{
	if ( name == "manager" )
		continue_processing();
	}
