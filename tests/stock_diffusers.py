"""One process of stock diffusers without distmatch per test worker, where exports are run: a process started for
each reload imported torch and diffusers again, 5-7 s a time. Each script runs as `python -c script argv...` would
(its own globals, sys.argv), and the process never imports distmatch."""
import atexit
import json
import subprocess
import sys

SERVER = r'''
import contextlib, io, json, sys, traceback
sys.modules["distmatch"] = None  # this process must do without distmatch
import torch, diffusers  # once, for every script after
for line in sys.stdin:
    job = json.loads(line)
    sys.argv, printed, status = ["-c", *job["argv"]], io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(printed):
            exec(job["script"], {"__name__": "__main__"})
    except BaseException:
        printed.write(traceback.format_exc())
        status = 1
    print(json.dumps({"status": status, "printed": printed.getvalue()}), flush=True)
'''

_server = None


def run(script: str, *argv) -> tuple[int, str]:
    """`script` run with sys.argv[1:] = argv in the stock-diffusers process: (its status, what it printed, or the
    traceback it ended with)."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        atexit.register(_server.kill)
    _server.stdin.write(json.dumps({"script": script, "argv": [str(a) for a in argv]}) + "\n")
    _server.stdin.flush()
    reply = _server.stdout.readline()
    if not reply:
        return 1, f"the stock-diffusers process ended (status {_server.wait()})"
    reply = json.loads(reply)
    return reply["status"], reply["printed"]
