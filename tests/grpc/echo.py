"""A real gRPC server and client (grpcio, no generated code: raw bytes in and out) for
tests/grpc.rs.

    python3 echo.py server            serves weir.test.Echo on 127.0.0.1, prints its port
    python3 echo.py client ADDR ADMIN CASE
                                      makes the calls of CASE through weir at ADDR (waiting on
                                      its metrics at ADMIN, never on the clock), prints one JSON
                                      line

Methods: Echo (answers the request, with the time the server was told is left in the trailing
metadata `x-left-ms`), Sleep and Hold (sleep the milliseconds their request names, then answer).
"""
import json
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc

SERVICE = "weir.test.Echo"


def echo(request, context):
    left = context.time_remaining()
    if left is not None:
        context.set_trailing_metadata((("x-left-ms", str(int(left * 1000))),))
    return request


def sleep(request, context):
    time.sleep(int(request.decode()) / 1000)
    return b"slept"


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Hold": grpc.unary_unary_rpc_method_handler(sleep),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Until the test closes our stdin (or ends).
    sys.stdin.read()
    server.stop(0)


def outcome(call, **kw):
    """Makes one call; its status code, details and trailing metadata, as JSON-ready values."""
    try:
        _, c = call.with_call(**kw)
        return {"code": "OK", "details": "", "trailing": dict(c.trailing_metadata() or ())}
    except grpc.RpcError as e:
        return {
            "code": e.code().name,
            "details": e.details(),
            "trailing": dict(e.trailing_metadata() or ()),
        }


def wait_for(admin, family, upstream, value):
    """Waits (up to 20 s) until weir's gauge FAMILY of UPSTREAM reads VALUE on its /metrics."""
    line = f'{family}{{upstream="{upstream}"}} {value}'
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
            if line in r.read().decode().splitlines():
                return
        time.sleep(0.005)
    raise TimeoutError(f"{line} never read")


def client(addr, admin, case):
    channel = grpc.insecure_channel(addr, options=(("grpc.enable_retries", 0),))
    method = lambda name: channel.unary_unary(f"/{SERVICE}/{name}")
    result = {"case": case}
    if case == "echo":
        start = time.monotonic()
        result.update(outcome(method("Echo"), request=b"hello", timeout=10))
        result["call_ms"] = (time.monotonic() - start) * 1000
    elif case == "overload":
        # One call holds the upstream's only slot; the next finds no queue.
        holder = threading.Thread(target=lambda: method("Sleep").with_call(b"2000", timeout=10))
        holder.start()
        wait_for(admin, "weir_in_flight", "tight", 1)
        result.update(outcome(method("Sleep"), request=b"0", timeout=10))
        holder.join()
    elif case == "deadline":
        # No deadline of the client's: weir's request_timeout is the only one, and weir answers.
        result.update(outcome(method("Sleep"), request=b"3000"))
    elif case == "tenant":
        # Tenant a holds the upstream's only slot, b waits: a's next call is over its share.
        a = (("x-tenant", "a"),)
        holder = threading.Thread(
            target=lambda: method("Hold").with_call(b"2000", timeout=10, metadata=a)
        )
        holder.start()
        wait_for(admin, "weir_in_flight", "shared", 1)
        waiter = threading.Thread(
            target=lambda: method("Hold").with_call(b"0", timeout=10, metadata=(("x-tenant", "b"),))
        )
        waiter.start()
        wait_for(admin, "weir_queue_depth", "shared", 1)
        result.update(outcome(method("Hold"), request=b"0", timeout=10, metadata=a))
        holder.join()
        waiter.join()
    elif case == "too_large":
        result.update(outcome(method("Echo"), request=b"x" * 5000, timeout=10))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4])
