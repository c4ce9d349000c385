"""AXS (balance-change ledger) from a non-Rust client: Python grpcio.

Starts ``takhin dev`` (broker, UTXO service and both AXS roles in one process) on free
127.0.0.1 ports with a fresh data directory, tied to the test by ``--exit-on-stdin-eof``,
and talks to the ``axs.v1.Ledger`` gRPC service the way an outside client would:

* ``test_axs_reflection``: grpcio-reflection's stock client
  (``ProtoReflectionDescriptorDatabase``) lists the services, describes
  ``axs.v1.Ledger`` and builds request/response message classes from the served
  descriptors alone (no .proto files), then calls ``GetBalances`` with them.
* ``test_axs_ledger_flow``: stubs generated at test time from
  ``proto/axs/v1/axs.proto`` with grpcio-tools' protoc; opens an account, submits a
  batch (+1000, -250, and a -5000 the consumer must reject for insufficient funds),
  polls each change to its final state, checks balance, history and the applied-change
  stream, and the INVALID_ARGUMENT / ALREADY_EXISTS answers to bad input.

Both tests end by closing the process's stdin and require it to exit within 30 s.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory

from conftest import REPO_ROOT, find_broker_binary, free_port, wait_port

PROTO_ROOT = REPO_ROOT / "proto"
AXS_PROTO = PROTO_ROOT / "axs" / "v1" / "axs.proto"
START_TIMEOUT_S = 60.0  # dev starts the broker, the UTXO store and two AXS roles
EXIT_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 10.0
LEDGER_METHODS = {"BatchSubmitBalanceChanges", "GetBalance", "ListChanges", "StreamAppliedChanges"}


class DevProcess:
    """One `takhin dev` process owned by one test. stdout is drained by a thread (kept
    in memory, for the "  axs:" line); stderr (tracing) goes to a log file."""

    def __init__(self, binary: str, tmp_path: Path):
        self.data_dir = tmp_path / "data"
        self.stderr_path = tmp_path / "takhin-dev.stderr.log"
        self.axs_port = free_port()
        self.cmd = [
            binary, "dev",
            "--data-dir", str(self.data_dir),
            "--kafka-listen", f"127.0.0.1:{free_port()}",
            "--admin-listen", f"127.0.0.1:{free_port()}",
            "--schema-registry-listen", f"127.0.0.1:{free_port()}",
            "--utxo-listen", f"127.0.0.1:{free_port()}",
            "--axs-listen", f"127.0.0.1:{self.axs_port}",
            "--exit-on-stdin-eof",
        ]
        self.stdout_lines: list[str] = []
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, cwd=str(tmp_path),
                                     env={**os.environ, "NO_COLOR": "1"})
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.axs_port}"

    def _drain(self) -> None:
        for raw in self.proc.stdout:
            self.stdout_lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_ready(self) -> str:
        """Waits for the AXS port and the "  axs:" stdout line; returns that line."""
        try:
            wait_port(self.axs_port, START_TIMEOUT_S, self.proc)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                line = next((l for l in self.stdout_lines if l.startswith("  axs:")), None)
                if line is not None:
                    return line
                if self.proc.poll() is not None:
                    raise RuntimeError(f"takhin dev exited with code {self.proc.returncode}")
                time.sleep(0.05)
            raise TimeoutError(f"no stdout line starting with '  axs:' after {START_TIMEOUT_S}s")
        except Exception as e:
            raise RuntimeError(f"takhin dev failed to start: {e}\n{self.diagnostics()}") from e

    def stop_via_stdin(self) -> int:
        """Closes stdin (the --exit-on-stdin-eof contract); returns the exit code."""
        self.proc.stdin.close()
        try:
            return self.proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"takhin dev still running {EXIT_TIMEOUT_S}s after its stdin was closed\n"
                        f"{self.diagnostics()}", pytrace=False)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self._reader.join(5)
        self._stderr.close()

    def diagnostics(self, n: int = 60) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            err = ["(no stderr log)"]
        return ("--- takhin dev command ---\n" + " ".join(self.cmd)
                + "\n--- stdout ---\n" + "\n".join(self.stdout_lines[-n:])
                + "\n--- stderr tail ---\n" + "\n".join(err))


@pytest.fixture
def axs_dev(tmp_path):
    binary = find_broker_binary()
    if binary is None:
        pytest.fail("takhin binary not found: set TAKHIN_BIN or run `cargo build --bin takhin`",
                    pytrace=False)
    dev = DevProcess(binary, tmp_path)
    try:
        dev.wait_ready()
        yield dev
    finally:
        alive_at_end = dev.proc.poll() is None
        dev.kill()
        # Shown by pytest only when the test failed.
        print(f"--- takhin dev (alive at end of test: {alive_at_end}) ---")
        print(dev.diagnostics())


def ready_channel(target: str) -> grpc.Channel:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
    return channel


# ------------------------------------------------------------------ reflection


def probe_reflection_v1(channel: grpc.Channel) -> str:
    """Diagnostic only: does the server answer grpc.reflection.v1 (same messages, other
    service name)? Used to explain a v1alpha failure, never to pass the test."""
    from grpc_reflection.v1alpha import reflection_pb2 as r

    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=r.ServerReflectionRequest.SerializeToString,
        response_deserializer=r.ServerReflectionResponse.FromString,
    )
    try:
        answers = list(call(iter([r.ServerReflectionRequest(list_services="")]),
                            timeout=RPC_TIMEOUT_S))
        names = [s.name for a in answers for s in a.list_services_response.service]
        return f"grpc.reflection.v1 answers with services {names}"
    except grpc.RpcError as e:
        return f"grpc.reflection.v1 also fails: {e.code()} {e.details()!r}"


@pytest.mark.timeout(180)
def test_axs_reflection(axs_dev):
    from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401  (the stock client's protocol)
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with ready_channel(axs_dev.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        try:
            services = list(db.get_services())
        except grpc.RpcError as e:
            pytest.fail(f"grpcio-reflection's client (grpc.reflection.v1alpha.ServerReflection, "
                        f"the only protocol grpcio-reflection ships) failed to list services: "
                        f"{e.code()} {e.details()!r}; {probe_reflection_v1(channel)}", pytrace=False)
        assert "axs.v1.Ledger" in services, f"services listed by reflection: {services}"

        pool = descriptor_pool.DescriptorPool(db)
        ledger = pool.FindServiceByName("axs.v1.Ledger")
        methods = {m.name: m for m in ledger.methods}
        missing = LEDGER_METHODS - set(methods)
        assert not missing, f"axs.v1.Ledger lacks {sorted(missing)}; has {sorted(methods)}"
        stream = methods["StreamAppliedChanges"]
        assert stream.server_streaming and not stream.client_streaming

        # Message classes from the served descriptors alone: no .proto file, no stubs.
        get_balances = methods["GetBalances"]
        req_cls = message_factory.GetMessageClass(get_balances.input_type)
        resp_cls = message_factory.GetMessageClass(get_balances.output_type)
        for name in ("BatchSubmitBalanceChanges", "GetBalance", "ListChanges"):
            for desc in (methods[name].input_type, methods[name].output_type):
                message_factory.GetMessageClass(desc)
        assert req_cls.DESCRIPTOR.full_name == "axs.v1.GetBalancesRequest"
        assert [f.name for f in resp_cls.DESCRIPTOR.fields] == ["balances"]

        # And use them: an unknown account is NOT_FOUND, decoded with reflected classes.
        call = channel.unary_unary(
            f"/{ledger.full_name}/{get_balances.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            call(req_cls(account=f"py-nobody-{uuid.uuid4().hex[:8]}"), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value

    code = axs_dev.stop_via_stdin()
    assert code == 0, f"takhin dev exited with {code} after stdin closed\n{axs_dev.diagnostics()}"


# ------------------------------------------------------------------ generated stubs


def generate_stubs(out: Path):
    """protoc (grpcio-tools) -> <out>/axs/v1/axs_pb2{,_grpc}.py, imported as axs.v1.*."""
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
         f"--python_out={out}", f"--grpc_python_out={out}", str(AXS_PROTO)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, f"grpc_tools.protoc failed ({r.returncode}):\n{r.stdout}{r.stderr}"
    for pkg in (out / "axs", out / "axs" / "v1"):
        (pkg / "__init__.py").touch()
    for name in [m for m in sys.modules if m == "axs" or m.startswith("axs.")]:
        del sys.modules[name]
    sys.path.insert(0, str(out))
    try:
        importlib.invalidate_caches()
        pb2 = importlib.import_module("axs.v1.axs_pb2")
        pb2_grpc = importlib.import_module("axs.v1.axs_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


def wait_final(stub, pb2, keys: list[str]) -> dict:
    """Polls GetChange until every key is APPLIED or REJECTED; returns key -> Change."""
    final = {pb2.APPLIED, pb2.REJECTED}
    done: dict = {}
    last: dict = {}
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        for key in keys:
            if key in done:
                continue
            change = stub.GetChange(pb2.GetChangeRequest(idempotency_key=key), timeout=RPC_TIMEOUT_S)
            last[key] = pb2.ChangeStatus.Name(change.status)
            if change.status in final:
                done[key] = change
        if len(done) == len(keys):
            return done
        time.sleep(0.1)
    pending = {k: last.get(k) for k in keys if k not in done}
    raise AssertionError(f"timed out after {SETTLE_TIMEOUT_S}s waiting for GetChange to report "
                         f"APPLIED or REJECTED; still not final: {pending}")


@pytest.mark.timeout(180)
def test_axs_ledger_flow(axs_dev, tmp_path):
    pb2, pb2_grpc = generate_stubs(tmp_path / "gen")
    run = uuid.uuid4().hex[:12]
    account = "py-alice"
    k_credit, k_debit, k_over = (f"py-{run}-credit", f"py-{run}-debit", f"py-{run}-overdraw")

    with ready_channel(axs_dev.target) as channel:
        stub = pb2_grpc.LedgerStub(channel)

        acct = stub.OpenAccount(pb2.OpenAccountRequest(
            account=account, assets=[pb2.AssetLimit(asset="USD", overdraft_limit="0")], shard=0,
        ), timeout=RPC_TIMEOUT_S)
        assert acct.account == account and acct.state == pb2.OPEN, acct

        def change(key: str, amount: str) -> "pb2.BalanceChange":
            return pb2.BalanceChange(idempotency_key=key, account=account, asset="USD",
                                     amount=amount, kind=pb2.IMMEDIATE)

        resp = stub.BatchSubmitBalanceChanges(pb2.BatchSubmitBalanceChangesRequest(changes=[
            change(k_credit, "1000"), change(k_debit, "-250"), change(k_over, "-5000"),
        ]), timeout=RPC_TIMEOUT_S)
        assert [r.idempotency_key for r in resp.results] == [k_credit, k_debit, k_over], resp
        assert not any(r.duplicate for r in resp.results), resp

        final = wait_final(stub, pb2, [k_credit, k_debit, k_over])
        statuses = {k: pb2.ChangeStatus.Name(c.status) for k, c in final.items()}
        assert statuses == {k_credit: "APPLIED", k_debit: "APPLIED", k_over: "REJECTED"}, final
        assert final[k_over].reason == "insufficient_funds", final[k_over]

        bal = stub.GetBalance(pb2.GetBalanceRequest(account=account, asset="USD"),
                              timeout=RPC_TIMEOUT_S)
        assert (bal.balance, bal.version) == ("750", 2), bal
        bals = stub.GetBalances(pb2.GetBalancesRequest(account=account), timeout=RPC_TIMEOUT_S)
        assert "USD" in [b.asset for b in bals.balances], bals

        hist = stub.ListChanges(pb2.ListChangesRequest(account=account, asset="USD"),
                                timeout=RPC_TIMEOUT_S)
        assert [e.idempotency_key for e in hist.entries] == [k_debit, k_credit], hist  # newest first
        assert [e.balance_after for e in hist.entries] == ["750", "1000"], hist
        assert hist.balance_as_of == "750", hist

        streamed = {}
        for applied in stub.StreamAppliedChanges(
                pb2.StreamAppliedChangesRequest(follow=False), timeout=30):
            streamed[applied.change.change.idempotency_key] = applied
            assert applied.cursor, applied
        assert {k_credit, k_debit, k_over} <= set(streamed), f"streamed keys: {sorted(streamed)}"
        assert streamed[k_over].change.status == pb2.REJECTED, streamed[k_over]

        # Bad input: a non-integer amount names the field; a reused key is a conflict.
        with pytest.raises(grpc.RpcError) as err:
            stub.BatchSubmitBalanceChanges(pb2.BatchSubmitBalanceChangesRequest(
                changes=[change(f"py-{run}-bad", "1.5")]), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "changes[0].amount" in (err.value.details() or ""), err.value.details()

        with pytest.raises(grpc.RpcError) as err:
            stub.BatchSubmitBalanceChanges(pb2.BatchSubmitBalanceChangesRequest(
                changes=[change(k_credit, "999")]), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, err.value

    code = axs_dev.stop_via_stdin()
    assert code == 0, f"takhin dev exited with {code} after stdin closed\n{axs_dev.diagnostics()}"
