# A listener that cannot bind stops Zeek with a message saying so, instead of publishing into
# the void.
#
# @TEST-EXEC-FAIL: zeek -b $PACKAGE HeadBits::websocket_address=192.0.2.1 > out 2>&1
# @TEST-EXEC: grep -q 'headbits: cannot listen for WebSocket clients on 192.0.2.1:27759/tcp' out
# @TEST-EXEC-FAIL: zeek -b $PACKAGE HeadBits::listen_websocket=F HeadBits::listen_broker=T HeadBits::broker_address=192.0.2.1 > out2 2>&1
# @TEST-EXEC: grep -q 'headbits: cannot listen for Broker peers on 192.0.2.1:9999/tcp' out2
