"""What a box runs once its payload has arrived (stdlib only; inside the sandbox). A box is a fresh locked-down
process in namespaces of its own (supervisor.py makes them); it is one of two kinds:

  candidate  imports the program and answers calls of its entry point: a call frame [args, kwargs] in, a
             reply frame out: ["ok", result, args after, kwargs after] or ["raise", builtin class name,
             args, message, args after, kwargs after]; an argument the call left unchanged comes back as
             null. Its first frame says whether the program imported: ["ready"] or ["import_error", name,
             message]. It holds the program and the arguments it is sent, never a test.
  test       runs the problem's tests as written, with the entry point (only the entry point) bound to a
             `Proxy` of a candidate box, and reports each test's verdict to the supervisor. It never holds
             candidate code: what a call returns is decoded into fresh plain objects (codec.py), arguments
             the call changed are copied back into the test's own objects, and an exception comes back as
             its nearest builtin class.

Test-to-supervisor messages are fixed-size (`TEST_MSG`): B (test i begins: send me a candidate) and
X (test i ended: status, detail, number of calls). The supervisor answers B with the candidate's two pipe
ends (SCM_RIGHTS).
"""

import builtins
import os
import random
import re
import socket
import struct
import sys
import types

from . import codec

TEST_MSG = struct.Struct("<cii16s240s")  # kind, test index, calls, status, detail
FDS_MSG = struct.Struct("<ci")           # b"C", test index (+ two fds)
VERDICTS = ("passed", "failed", "runtime_error", "memory_limit", "ended")
BUILTIN_EXCEPTIONS = {name: cls for name, cls in vars(builtins).items()
                      if isinstance(cls, type) and issubclass(cls, BaseException)}
_BY_ID = {id(cls): name for name, cls in BUILTIN_EXCEPTIONS.items()}
# Exceptions that end a process or an iteration rather than a call: the candidate raising one fails the test,
# whatever the test does with it (a test's `except BaseException` must not turn a candidate's SystemExit(0)
# into a pass, and a StopIteration would end the test's own map() or zip() as if the test were done).
ENDING = ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "StopIteration", "StopAsyncIteration")
MAX_MESSAGE = 1000


def builtin_name(exc):
    """The name of an exception's nearest builtin class (its own for builtin exceptions)."""
    for cls in type.__dict__["__mro__"].__get__(type(exc)):
        if id(cls) in _BY_ID:
            return _BY_ID[id(cls)]
    return "BaseException"


def message(exc):
    try:
        return str(exc)[:MAX_MESSAGE]
    except BaseException:  # noqa: B036 - a candidate's __str__ may raise anything
        return ""


# ------------------------------------------------------------------------------------------------ candidate

def serve_candidate(payload, in_fd, out_fd):
    """Import the program, then answer calls until the test closes its end of the pipe."""
    scope = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(payload["program"], "solution.py", "exec"), scope)
    except BaseException as exc:  # noqa: B036 - whatever the program raises is its result
        flush()
        codec.write_frame(out_fd, ["import_error", builtin_name(exc), message(exc)])
        return
    flush()
    codec.write_frame(out_fd, ["ready"])
    entry_point = payload["entry_point"]
    while True:
        try:
            request = codec.read_frame(in_fd)
        except EOFError:
            return
        reply = answer(scope, entry_point, request)
        flush()  # what the call printed reaches the supervisor before the process is killed
        codec.write_frame(out_fd, reply)


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: B036 - the program may have replaced or closed them
            pass


def answer(scope, entry_point, request):
    args_trees, kwargs_trees = request
    args = [codec.decode(t) for t in args_trees]
    kwargs = {name: codec.decode(t) for name, t in kwargs_trees}
    try:
        function = scope[entry_point]
    except KeyError:
        return ["raise", "NameError", None, "name %r is not defined" % entry_point, None, None]
    try:
        result = function(*args, **kwargs)
        outcome = ["ok", codec.encode(result, opaque=True)]
    except BaseException as exc:  # noqa: B036 - the call's outcome, sent as its builtin class
        try:
            exc_args = codec.encode(tuple(BaseException.args.__get__(exc)))
        except (codec.Unsendable, RecursionError, MemoryError):
            exc_args = None
        outcome = ["raise", builtin_name(exc), exc_args, message(exc)]
    after_args = [_changed(a, t) for a, t in zip(args, args_trees)]
    after_kwargs = [[name, _changed(kwargs[name], t)] for name, t in kwargs_trees]
    return outcome + [after_args, after_kwargs]


def _changed(value, before):
    try:
        after = codec.encode(value, opaque=True)
    except codec.Unsendable:
        return None
    return None if after == before else after


# ------------------------------------------------------------------------------------------------ tests

class CandidateFault(BaseException):
    """The candidate broke the protocol or its process ended; the test has failed whatever it catches."""


class Proxy:
    """The candidate's entry point as the test sees it. Each call: arguments encoded (not plain data: the test
    fails as unjudgeable here), sent to the candidate box, the reply decoded within the codec's bounds."""

    def __init__(self, channel, index, name):
        self.channel, self.index, self.__name__ = channel, index, name
        self.calls, self.fault, self.pipes = 0, None, None

    def __call__(self, *args, **kwargs):
        if self.fault is not None:
            raise CandidateFault(self.fault[1])
        self.calls += 1
        try:
            request = [[codec.encode(a) for a in args], [[k, codec.encode(v)] for k, v in kwargs.items()]]
        except codec.Unsendable as exc:
            self._fail("failed", "unjudgeable: the test passes %s to %s, which is not plain data"
                       % (exc, self.__name__))
        if self.pipes is None:
            self.pipes = self.channel.candidate(self.index)
            self._ready()
        try:
            codec.write_frame(self.pipes[0], request)
            reply = codec.read_frame(self.pipes[1])
        except (OSError, EOFError):
            self._fail("ended", "the candidate's process ended")
        except codec.FrameError as exc:
            self._fail("runtime_error", "malformed reply from the candidate: %s" % exc)
        try:
            outcome = self._outcome(reply, args, kwargs)
        except codec.FrameError as exc:
            self._fail("runtime_error", "malformed reply from the candidate: %s" % exc)
        if outcome[0] == "ok":
            return outcome[1]
        raise outcome[1]

    def _ready(self):
        try:
            first = codec.read_frame(self.pipes[1])
        except (OSError, EOFError):
            self._fail("ended", "the candidate's process ended at import")
        except codec.FrameError:
            first = None
        if first == ["ready"]:
            return
        if type(first) is list and len(first) == 3 and first[0] == "import_error" and type(first[1]) is str:
            name = first[1] if first[1] in BUILTIN_EXCEPTIONS else "Exception"
            self._fail("memory_limit" if name == "MemoryError" else "runtime_error",
                       "program raised %s at import" % name)
        self._fail("runtime_error", "malformed first frame from the candidate")

    def _outcome(self, reply, args, kwargs):
        if type(reply) is not list or len(reply) not in (4, 6):
            raise codec.FrameError("not a reply")
        after_args, after_kwargs = reply[-2], reply[-1]
        if type(after_args) is not list or len(after_args) != len(args) or type(after_kwargs) is not list \
                or len(after_kwargs) != len(kwargs):
            raise codec.FrameError("changed arguments do not match the call")
        changes = [(arg, codec.decode(tree)) for arg, tree in zip(args, after_args) if tree is not None]
        for item in after_kwargs:
            if type(item) is not list or len(item) != 2 or item[0] not in kwargs:
                raise codec.FrameError("changed arguments do not match the call")
            if item[1] is not None:
                changes.append((kwargs[item[0]], codec.decode(item[1])))
        if reply[0] == "ok" and len(reply) == 4:
            value = codec.decode(reply[1])
            for arg, new in changes:
                codec.copy_into(arg, new)
            return "ok", value
        if reply[0] != "raise" or len(reply) != 6 or type(reply[1]) is not str or type(reply[3]) is not str:
            raise codec.FrameError("not a reply")
        for arg, new in changes:
            codec.copy_into(arg, new)
        name = reply[1]
        if name in ENDING:
            self._fail("runtime_error", "the candidate raised %s" % name)
        cls = BUILTIN_EXCEPTIONS.get(name, Exception)
        exc_args = codec.decode(reply[2]) if reply[2] is not None else None
        return "raise", _exception(cls, exc_args, reply[3][:MAX_MESSAGE])

    def _fail(self, status, detail):
        if self.fault is None:
            self.fault = (status, detail)
        raise CandidateFault(detail)

    def close(self):
        if self.pipes is not None:
            for fd in self.pipes:
                os.close(fd)
            self.pipes = None


def _exception(cls, args, text):
    for attempt in ((lambda: cls(*args)) if type(args) is tuple else None, lambda: cls(text)):
        if attempt is not None:
            try:
                return attempt()
            except Exception:  # noqa: BLE001 - a class whose constructor wants other arguments
                pass
    return Exception(text)


class Channel:
    """The test box's socket to the supervisor."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)

    def candidate(self, index):
        """(write end of the candidate's call pipe, read end of its reply pipe) for test `index`."""
        self.send(b"B", index)
        data, ancillary, _, _ = self.sock.recvmsg(FDS_MSG.size, socket.CMSG_LEN(8))
        fds = []
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds += struct.unpack("%di" % (len(payload) // 4), payload[:len(payload) // 4 * 4])
        if len(data) != FDS_MSG.size or FDS_MSG.unpack(data) != (b"C", index) or len(fds) != 2:
            raise RuntimeError("the supervisor sent no candidate for test %d" % index)
        return fds[0], fds[1]

    def send(self, kind, index, calls=0, status="", detail=""):
        self.sock.send(TEST_MSG.pack(kind, index, calls, status.encode(), _ascii(detail).encode()[:240]))


def _ascii(text):
    return text.encode("ascii", "backslashreplace").decode("ascii")


def run_tests(payload, sock_fd):
    """Run tests[start:] one after another, each with a candidate box of its own; report each verdict."""
    channel = Channel(sock_fd)
    sys.modules["pytest"] = pytest_shim()
    tests = payload["tests"]
    for index in range(payload["start"], len(tests)):
        proxy = Proxy(channel, index, payload["entry_point"])
        status, detail = run_test(payload["preamble"], payload["entry_point"], tests[index], proxy)
        flush()
        proxy.close()
        channel.send(b"X", index, proxy.calls, status, detail)


def run_test(preamble, entry_point, test, proxy):
    """(status, detail) of one test run as written: the preamble (a HumanEval prompt: its imports and helper
    functions), the entry point bound to the proxy, the test's source, then `check(candidate)` where the
    format calls for it, then any `test*` functions and unittest.TestCase classes the source defined."""
    random.seed()  # from the OS, as an unseeded test's draws are: a candidate cannot replay them
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module  # unittest.main() finds the test's classes here
    sys.argv = ["test"]               # and no arguments
    scope = module.__dict__
    outcome = None
    try:
        exec(compile(preamble, "<prompt>", "exec"), scope)
        scope[entry_point] = proxy
        before = dict(scope)
        try:
            exec(compile(test["source"], "<test>", "exec"), scope)
        except SystemExit as exc:  # unittest.main() ran the test's classes: its exit code is the verdict
            if exc.code not in (None, 0, False):
                raise AssertionError("unittest reported failures") from None
        else:
            if test["check"]:
                scope["check"](proxy)
            run_defined_tests(scope, before)
    except BaseException as exc:  # noqa: B036 - every way a test can end is a verdict
        outcome = exc
    if proxy.fault is not None:
        return proxy.fault
    if outcome is None:
        return "passed", ""
    name, text = builtin_name(outcome), message(outcome)
    detail = name + (": " + text if text else "")
    if isinstance(outcome, AssertionError):
        return "failed", detail
    if isinstance(outcome, MemoryError):
        return "memory_limit", detail
    return "runtime_error", "raised " + detail


def run_defined_tests(scope, before):
    """pytest-style `test*` functions and unittest.TestCase classes that the test source defined."""
    defined = [(name, value) for name, value in scope.items() if before.get(name) is not value]
    for name, value in defined:
        if isinstance(value, types.FunctionType) and name.startswith("test"):
            if value.__code__.co_argcount:
                raise TypeError("test function %s needs arguments (fixtures are not supported)" % name)
            value()
        elif isinstance(value, type) and "unittest" in sys.modules \
                and issubclass(value, sys.modules["unittest"].TestCase):
            unittest = sys.modules["unittest"]
            result = unittest.TestResult()
            unittest.defaultTestLoader.loadTestsFromTestCase(value).run(result)
            problems = result.failures + result.errors
            if problems:
                raise AssertionError(problems[0][1].strip().splitlines()[-1][:200])


# ------------------------------------------------------------------------------------------------ pytest

def pytest_shim():
    """A `pytest` module with what plain test files use from it: `raises` (anything else of pytest a test
    uses makes it fail, and its problem unjudgeable)."""
    module = types.ModuleType("pytest")
    module.raises = raises
    return module


class _Raises:
    def __init__(self, expected, match):
        self.expected, self.match, self.value = expected, match, None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):  # noqa: ARG002 - the context manager protocol
        if kind is None:
            raise AssertionError("DID NOT RAISE %r" % (self.expected,))
        if not issubclass(kind, self.expected):
            return False
        if self.match is not None and not re.search(self.match, str(value)):
            raise AssertionError("pattern %r does not match %r" % (self.match, str(value)))
        self.value = value
        return True


def raises(expected, *args, match=None, **kwargs):
    context = _Raises(expected, match)
    if not args:
        return context
    with context:
        args[0](*args[1:], **kwargs)
    return context
