"""The program sandbox: what a model-written program may and may not do, and its limits."""

import pytest

from scaffold.sandbox import network_isolation, run_python


def test_a_program_prints_and_writes_in_its_own_folder():
    r = run_python("open('notes.txt', 'w').write('7')\nprint(int(open('notes.txt').read()) * 6)")
    assert r.ok and r.stdout == "42\n" and r.error == ""


@pytest.mark.parametrize(("source", "refused"), [
    ("open({path!r}, 'w').write('x')", "writing"),
    ("import os; os.remove({path!r})", "os.remove"),
    ("import subprocess; subprocess.run(['true'])", "subprocess.Popen"),
    ("import os; os.system('true')", "os.system"),
    ("import socket; socket.socket()", "socket.__new__"),
    ("import ctypes; ctypes.CDLL(None)", "ctypes.dlopen"),
])
def test_what_a_program_may_not_do_is_refused(tmp_path, source, refused):
    outside = tmp_path / "outside.txt"
    outside.write_text("kept")
    r = run_python(source.format(path=str(outside)))
    assert not r.ok and "PermissionError" in r.error and refused in r.error
    assert outside.read_text() == "kept"


def test_limits_end_a_runaway_program():
    looping = run_python("while True: pass", timeout_s=30, cpu_s=1)
    assert not looping.ok and "CPU-time limit" in looping.error
    hanging = run_python("import time; time.sleep(60)", timeout_s=1)
    assert hanging.timed_out and hanging.error == "timed out"
    greedy = run_python("x = bytearray(8 * 2**30)", memory_mb=512)
    assert not greedy.ok and "MemoryError" in greedy.error


def test_no_network_where_the_kernel_allows_a_namespace():
    if not network_isolation():  # said, not skipped: the audit hook still refuses sockets
        assert not run_python("import socket; socket.socket()").ok
        return
    # /proc/net/dev lists the interfaces of the reader's own network namespace
    devices = "print([x.split(':')[0].strip() for x in open('/proc/net/dev').readlines()[2:]])"
    r = run_python(devices)
    assert r.ok and r.stdout.strip() == "['lo']", r.stdout
