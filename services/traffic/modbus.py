"""Modbus/TCP: pymodbus's client and server, a few register and coil operations.

Clients vary the unit (device) id, function codes, addresses, counts and values, as SCADA
pollers and engineering stations do. Zeek's Modbus analyzer logs the service as "modbus".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

from pymodbus.client import ModbusTcpClient
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import LOOPBACK, event_loop_thread, free_port

TABLE_SIZE = 1000
FUNCTIONS = ("read_holding_registers", "read_input_registers", "read_coils",
             "read_discrete_inputs", "write_register", "write_registers", "write_coil")


@dataclass(frozen=True)
class ModbusOperation:
    function: str
    address: int
    count: int
    value: int


@dataclass(frozen=True)
class ModbusPlan:
    device_id: int
    operations: tuple[ModbusOperation, ...]
    transport: str = "tcp"


def plan(rng: random.Random) -> ModbusPlan:
    operations = []
    for _ in range(rng.randint(1, 4)):
        count = rng.randint(1, 32)
        operations.append(ModbusOperation(
            function=rng.choice(FUNCTIONS),
            address=rng.randint(0, TABLE_SIZE - count - 1),
            count=count,
            value=rng.randint(0, 65535),
        ))
    return ModbusPlan(device_id=rng.choice((1, 1, 1, 2, 3, 17, 247)), operations=tuple(operations))


def _device() -> ModbusDeviceContext:
    def block() -> ModbusSequentialDataBlock:
        return ModbusSequentialDataBlock(1, [0] * TABLE_SIZE)  # pymodbus maps address 0 to 1

    return ModbusDeviceContext(di=block(), co=block(), hr=block(), ir=block())


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    address = (LOOPBACK, free_port())
    with event_loop_thread() as loop:

        async def start() -> ModbusTcpServer:
            server = ModbusTcpServer(ModbusServerContext(devices=_device()), address=address)
            await server.serve_forever(background=True)
            return server

        server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        try:
            yield {"tcp": address}
        finally:
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)


def _call(client: ModbusTcpClient, operation: ModbusOperation, device_id: int):
    method = getattr(client, operation.function)
    if operation.function == "write_register":
        return method(operation.address, operation.value, device_id=device_id)
    if operation.function == "write_coil":
        return method(operation.address, bool(operation.value & 1), device_id=device_id)
    if operation.function == "write_registers":
        values = [(operation.value + step) % 65536 for step in range(operation.count)]
        return method(operation.address, values, device_id=device_id)
    return method(operation.address, count=operation.count, device_id=device_id)


def talk(session: ModbusPlan, address: Address) -> int:
    """Returns how many operations the server answered without an exception code."""
    client = ModbusTcpClient(address[0], port=address[1], timeout=10, retries=0)
    if not client.connect():
        raise ConnectionError(f"Modbus client could not connect to {address}")
    try:
        return sum(not _call(client, operation, session.device_id).isError()
                   for operation in session.operations)
    finally:
        client.close()


PROTOCOL = TrafficProtocol("modbus", 502, ("modbus",), serve, plan, talk)
