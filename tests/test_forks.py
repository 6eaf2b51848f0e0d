"""SIGINT and SIGTERM never handled inside a fork's callbacks (ahba_app.cli.forks), and the run's
handler in a process it forked (ahba_app.cli.run._Signals).

Each case that installs handlers or forks runs in its own interpreter: fork hooks cannot be
unregistered, and a signal gone astray must not reach pytest.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
from functools import partial

import pytest

from ahba_app.cli import forks
from child_signals import default_signals


def _python(code: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=default_signals)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_hooks_are_registered_once_and_run_no_python_code(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: calls.append(hooks))
    block = forks.ForkSignalBlock()
    assert not block.registered
    assert block.register() and block.register() and block.registered
    assert len(calls) == 1
    assert set(calls[0]) == {"before", "after_in_parent", "after_in_child"}
    # C functions: a handler pending when the fork starts cannot run in them
    for hook in calls[0].values():
        assert isinstance(hook, partial) and isinstance(hook.func, ctypes._CFuncPtr), hook
    assert forks.BLOCK_AROUND_FORK is not block  # (the process's own is left alone)


def test_each_multiproc_pool_registers_the_hooks_once_per_process(monkeypatch):
    """The hooks are registered when a MultiProc pool is made (Nipype and filelock imported:
    ours come last), and never again: a process making thousands of runs adds no hooks."""
    from ahba_app.cli import multiproc

    calls = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: calls.append(hooks))
    monkeypatch.setattr(multiproc, "BLOCK_AROUND_FORK", forks.ForkSignalBlock())
    for _ in range(3):
        multiproc.MultiProcPlugin(plugin_args={"n_procs": 2}).pool.shutdown(wait=False)
    assert len(calls) == 1 and multiproc.BLOCK_AROUND_FORK.registered


_FORK_WITH_A_SIGNAL = """
    import _thread, ctypes, functools, json, os, signal, sys, threading, time
    import filelock  # (fork callbacks in Python, as in a run)
    from ahba_app.cli import forks, run

    signum, how, helper = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "thread"
    unraisable = []
    sys.unraisablehook = unraisable.append
    signals = run._Signals().install()
    # C functions only: the signal is pending when filelock's callback starts
    if how == "kernel":
        once = map(ctypes.CDLL(None).kill, [os.getpid()], [signum])
    else:  # another thread received it: Python handles it in the main thread
        once = map(_thread.interrupt_main, [signum])
    os.register_at_fork(before=functools.partial(next, once, None))
    forks.BLOCK_AROUND_FORK.register()  # (after the others: outermost)
    if helper:  # a thread the kernel can deliver the signal to while the main one blocks it
        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
    raised_at, fork_line = None, sys._getframe().f_lineno + 2
    try:
        if os.fork() == 0:  # (the child: its mask restored too)
            os._exit(3 if forks.blocked(signal.SIGTERM) or forks.blocked(signal.SIGINT) else 0)
        time.sleep(10)  # (the helper thread may take the signal only after the fork)
    except run.Interrupted as stop:
        raised_at = "os.fork()" if stop.__traceback__.tb_lineno == fork_line else "later"
    signals.restore()
    print(json.dumps({"raised_at": raised_at, "received": signals.received,
                      "blocked": forks.blocked(signal.SIGTERM) or forks.blocked(signal.SIGINT),
                      "child": os.waitstatus_to_exitcode(os.wait()[1]),
                      "unraisable": [repr(u.exc_value) for u in unraisable]}))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize(("how", "helper"), [("kernel", "alone"), ("kernel", "thread"),
                                             ("python", "alone")])
def test_a_signal_during_a_fork_is_raised_when_the_fork_returns(signum, how, helper):
    """Sent before filelock's before-fork callback (issue #16's CI failure: raised there, it
    broke filelock's callbacks, whose errors were printed, and the exception was lost): the
    callbacks run whole, and :class:`Interrupted` comes from ``os.fork()`` in the parent (or
    later, when the kernel gave the signal to the helper thread and it ran after the fork)."""
    seen = _python(_FORK_WITH_A_SIGNAL, int(signum), how, helper)
    # (a signal the kernel gives the helper thread reaches Python when that thread runs: maybe
    # after the fork, which is then over, and the main thread raises it wherever it is)
    places = ("os.fork()",) if helper == "alone" else ("os.fork()", "later")
    assert seen.pop("raised_at") in places
    assert seen == {"received": signum, "blocked": False, "child": 0, "unraisable": []}


def test_a_fork_without_signal_leaves_both_masks_as_they_were():
    seen = _python("""
        import json, os, signal
        from ahba_app.cli import forks

        forks.BLOCK_AROUND_FORK.register()
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])  # (a program's own)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, json.dumps(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, ())))
                     .encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = json.loads(os.read(read, 1000))
        print(json.dumps({"parent": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, ())),
                          "child": child}))
    """)
    assert seen == {"parent": [signal.SIGUSR1], "child": [signal.SIGUSR1]}


def test_the_handler_holds_a_signal_its_thread_blocks():
    """Handed a signal while the main thread blocks it (a fork under way), the handler sends it
    back to the thread: it is raised when the thread unblocks it, not before."""
    seen = _python("""
        import _thread, json, signal, sys
        from ahba_app.cli import run

        signals = run._Signals().install()
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        _thread.interrupt_main(signal.SIGTERM)  # (handled at the next bytecodes)
        steps = [1, 2, 3]
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
            where = "not raised"
        except run.Interrupted as stop:
            where = f"raised by the unblocking, signal {stop.signum}"
        signals.restore()
        print(json.dumps({"received": signals.received, "where": where}))
    """)
    assert seen == {"received": signal.SIGTERM,
                    "where": f"raised by the unblocking, signal {int(signal.SIGTERM)}"}


def test_a_forked_process_ignores_sigint_and_ends_on_sigterm():
    """In a process the run forked (a MultiProc worker before its own handlers are set), the
    run's handler does what the worker's will: no Interrupted unwinding the run's code there."""
    seen = _python("""
        import json, os, signal
        from ahba_app.cli import run

        signals = run._Signals().install()
        status = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            pid = os.fork()
            if pid == 0:
                try:
                    os.kill(os.getpid(), signum)
                    os._exit(7)  # went on
                except BaseException:
                    os._exit(9)
            status[signum.name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        signals.restore()
        print(json.dumps({"status": status, "received": signals.received}))
    """)
    assert seen == {"status": {"SIGINT": 7, "SIGTERM": -signal.SIGTERM}, "received": None}
