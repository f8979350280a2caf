#!/usr/bin/env python3
"""Time to the first framebuffer update: through the web console's path against raw VNC.

For a running VM (firmware screen), N times, interleaved:

* **console**: ``display`` ACP (token) → WebSocket to the agent's proxy → RFB
  handshake (version, security None, init) → FramebufferUpdateRequest → the
  first FramebufferUpdate header;
* **raw VNC**: TCP to the VM's VNC port on loopback → the same RFB steps;
* an XMPP ping to the VM, the floor of the ``display`` round trip.

Prints median and p99 of each and the ratios (figures against floors measured
in the same run, never fixed thresholds).

    .venv/bin/python bench/bench_console.py [-n 30]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time

from websockets.asyncio.client import connect

from common import describe, running_agent
from vm_helpers import CONTROL, HV_NS, alloc, unique_name, vm_full, wait_vm_ready

NS = "archipel:virtualmachine:vnc"


class Stream:
    """``read(n)`` over a TCP stream or over WebSocket messages; ``write(data)``."""

    def __init__(self, reader=None, writer=None, ws=None):
        self.reader, self.writer, self.ws = reader, writer, ws
        self.buffer = b""

    async def read(self, n: int) -> bytes:
        if self.ws is None:
            return await self.reader.readexactly(n)
        while len(self.buffer) < n:
            self.buffer += await self.ws.recv()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def write(self, data: bytes) -> None:
        if self.ws is None:
            self.writer.write(data)
            await self.writer.drain()
        else:
            await self.ws.send(data)


async def first_update(stream: Stream) -> None:
    """RFB 3.8 with security None, up to the first FramebufferUpdate's header."""
    version = await stream.read(12)
    assert version.startswith(b"RFB 003.00"), version
    await stream.write(b"RFB 003.008\n")
    count = (await stream.read(1))[0]
    types = await stream.read(count)
    assert 1 in types, f"no security 'None' offered: {list(types)}"
    await stream.write(b"\x01")
    assert await stream.read(4) == b"\0\0\0\0"
    await stream.write(b"\x01")  # shared
    width, height = struct.unpack(">HH", await stream.read(4))
    await stream.read(16)
    (name_len,) = struct.unpack(">I", await stream.read(4))
    await stream.read(name_len)
    await stream.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
    message = await stream.read(4)  # type, padding, number of rectangles
    assert message[0] == 0, f"expected a FramebufferUpdate, got message type {message[0]}"


async def via_console(admin, vm: str) -> float:
    t0 = time.perf_counter()
    query = await admin.acp(vm, NS, "display")
    url = query.find(f"{{{NS}}}display").get("url")
    # this client stops reading after the header: it must not wait for a polite close
    async with connect(url, compression=None, max_size=None, close_timeout=0.5) as ws:
        await first_update(Stream(ws=ws))
        return time.perf_counter() - t0


async def raw_vnc(port: int) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await first_update(Stream(reader, writer))
        return time.perf_counter() - t0
    finally:
        writer.close()


async def measure(n: int) -> dict:
    async with running_agent() as (stack, agent, admin):
        jid = await alloc(admin, agent.full_jid, unique_name("bench-console"))
        vm = vm_full(jid, agent.jid)
        try:
            await wait_vm_ready(admin, vm)
            await admin.acp(vm, CONTROL, "create")
            port = int((await admin.acp(vm, NS, "display")).find(f"{{{NS}}}display").get("port"))
            await asyncio.sleep(2)  # the firmware draws its first screen
            for _ in range(3):  # warm up both paths
                await via_console(admin, vm)
                await raw_vnc(port)
            pings, console, raw = [], [], []
            for _ in range(n):
                t0 = time.perf_counter()
                await admin.ping(vm)
                pings.append(time.perf_counter() - t0)
                console.append(await via_console(admin, vm))
                raw.append(await raw_vnc(port))
        finally:
            await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
    print(f"\n{n} runs each, interleaved, one client, agent and stack on loopback, VM type {stack.domain_type}")
    ping = describe("xmpp ping (VM)", pings)
    con = describe("display → first update", console)
    vnc = describe("raw VNC → first update", raw)
    ratios = {
        "console/raw VNC (median)": con["median_ms"] / vnc["median_ms"],
        "console/(ping+raw VNC) (median)": con["median_ms"] / (ping["median_ms"] + vnc["median_ms"]),
        "console/raw VNC (p99)": con["p99_ms"] / vnc["p99_ms"],
    }
    for name, value in ratios.items():
        print(f"ratio {name:<38} {value:.2f}")
    return {"ping": ping, "console": con, "raw_vnc": vnc, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.n))
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
