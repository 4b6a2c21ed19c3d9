#!/usr/bin/env python3
"""TLS in front of a plaintext OTLP receiver, for the OTLP sink's TLS tests.

    tls_proxy.py CERT KEY LISTEN_PORT TARGET_PORT [LISTEN_PORT TARGET_PORT ...]

Offers ALPN h2 and http/1.1 (gRPC clients insist on h2 being negotiated) and
copies bytes both ways; rotel itself has no TLS listener.
"""
import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def handler(target):
    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    return handle


async def main():
    cert, key, *ports = sys.argv[1:]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    servers = []
    for listen, target in zip(ports[::2], ports[1::2]):
        servers.append(await asyncio.start_server(handler(int(target)), "127.0.0.1", int(listen), ssl=ctx))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
