"""twzd [--home DIR] [--foreground]: the twzlinux kernel daemon for one home directory.

Without --foreground it starts a detached daemon (stdio to DIR/twzd.log) and returns once it
answers; twzrun and twz do the same on demand, so running twzd by hand is optional.
"""

import argparse
import os
import sys

from twzlinux.daemon import client


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="twzd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", help="state directory (default $TWZ_HOME or "
                                   "~/.local/share/twzlinux)")
    ap.add_argument("--foreground", action="store_true",
                    help="serve in this process, logging to stderr and DIR/twzd.log")
    ap.add_argument("--memory-budget", type=int, metavar="MB",
                    help="keep volatile objects within MB MiB of memory, paging the rest to "
                         "disk (sets TWZ_MEMORY_BUDGET; docs/userfaultfd.md)")
    opts = ap.parse_args(argv)
    if opts.memory_budget is not None:
        if opts.memory_budget <= 0:
            ap.error("--memory-budget must be a positive number of MiB")
        os.environ["TWZ_MEMORY_BUDGET"] = str(opts.memory_budget)
    home = client.home_from(opts.home)
    if opts.foreground:
        from twzlinux.daemon import server
        return server.run(home)
    try:
        conn = client.start(home)
    except (client.ClientError, OSError) as e:
        print(f"twzd: {e}", file=sys.stderr)
        return 1
    print(f"twzd running for {home} (pid {conn.hello.get('pid')}, log {home}/twzd.log)")
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
