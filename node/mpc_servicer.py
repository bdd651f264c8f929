"""gRPC edge of an MPC party (`MpcService.Session`): an owner's node here, the dealer in `dealer.py`.

One bidirectional stream per party per job. The first message is the header (checked before anything else is
read); then a reader thread delivers the relayed frames to the party's `StreamLink` while the party computes in
a worker thread, and this generator yields the party's own frames as they are sent, then its result. A party
that fails ends the call with its reason (the coordinator fails the job); a malformed message fails the call,
never the daemon.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

from fedtrust.errors import Error, InvalidInput
from fedtrust.node.mpc_link import StreamLink
from fedtrust.node.mpc_runtime import MpcRuntime
from fedtrust.node.node_servicer import NodeServicer
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import read_header
from fedtrust.v1 import mpc_pb2, mpc_pb2_grpc

__all__ = ["NodeMpcServicer", "drive_session"]

log = logging.getLogger("fedtrust.node")
_DONE = object()


def drive_session(requests, link: StreamLink, work: Callable[[StreamLink], tuple[bytes, bytes]],
                  name: str) -> Iterator[mpc_pb2.MpcOut]:
    """Feed `link` from `requests` (a reader thread), run `work(link)` (a worker thread) and yield its frames,
    then its result (attestation, sealed output); re-raise its error."""
    result: dict = {}

    def reader() -> None:
        try:
            for msg in requests:
                if msg.WhichOneof("part") != "frame":
                    raise InvalidInput("only frames may follow the MPC header")
                link.deliver(msg.frame.peer, msg.frame.sealed)
            link.close("the coordinator ended the session")
        except Error as e:
            result.setdefault("error", e)
            link.close(str(e))
        except Exception:  # the call was cancelled or broke: the worker's next recv fails
            link.close("the coordinator's stream broke off")

    def worker() -> None:
        try:
            result["ok"] = work(link)
        except BaseException as e:  # noqa: BLE001 - re-raised in the servicer's thread
            result.setdefault("error", e)
        finally:
            link.outgoing.put(_DONE)

    threading.Thread(target=reader, name=f"mpc-in-{name}", daemon=True).start()
    threading.Thread(target=worker, name=f"mpc-{name}", daemon=True).start()
    while True:
        try:
            item = link.outgoing.get(timeout=1.0)
        except queue.Empty:
            continue
        if item is _DONE:
            break
        dst, frame = item
        yield mpc_pb2.MpcOut(frame=mpc_pb2.MpcFrame(peer=dst, sealed=frame))
    if "ok" not in result:
        raise result.get("error") or InvalidInput("the MPC session ended without a result")
    attestation, sealed = result["ok"]
    yield mpc_pb2.MpcOut(result=mpc_pb2.MpcResult(attestation_envelope=attestation, sealed_output=sealed))


class NodeMpcServicer(mpc_pb2_grpc.MpcServiceServicer):
    def __init__(self, node_servicer: NodeServicer, idle_s: float) -> None:
        self.node = node_servicer  # its runtime, kinds, metrics and audit log
        self.idle_s = idle_s

    @guarded
    def Session(self, request_iterator, context):
        peer = peer_identity(context)
        who = f"{peer[0]}/{peer[1]}"
        rt = self.node.runtime
        header = read_header(request_iterator)
        checked = rt.check_job(peer, header.job_envelope, header.contract_envelope)
        mpc = self.node.kinds.handler(checked.job.kind)
        if not isinstance(mpc, MpcRuntime):
            raise InvalidInput(f"job kind {checked.job.kind!r} sent to the MPC endpoint; use the endpoint for that "
                               "kind")
        start = time.monotonic()
        job = checked.job
        link = StreamLink(job.participants.index(rt.name), len(job.participants) + 1, idle_s=self.idle_s)

        def work(lk: StreamLink) -> tuple[bytes, bytes]:
            att, sealed = mpc.run(checked, list(header.admissions), lk)
            return att.to_json(), sealed

        try:
            yield from drive_session(request_iterator, link, work, rt.name)
        except Error as e:
            self.node.metrics.refused(job.kind, e.kind)
            rt.store.audit("refused", f"{e.kind}: {e}", peer=who, job_id=job.job_id,
                           contract_digest=checked.contract_digest)
            rt.record_job(checked, "refused", detail=f"{e.kind}: {e}")
            raise
        rt.store.audit("released", "mpc output shares (sealed to the buyer)", contract_digest=checked.contract_digest,
                       job_id=job.job_id, peer=who)
        self.node.metrics.jobs.labels(job.kind, "released").inc()
        self.node.metrics.duration.labels(job.kind).observe(time.monotonic() - start)
