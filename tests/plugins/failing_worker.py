"""A one-shot worker that ends with the structured error line (quantkit.workers.contract.fail),
or succeeds with its JSON result: python -m tests.plugins.failing_worker fail|engine|ok|crash"""

import json
import sys

from quantkit.workers.contract import fail

if __name__ == "__main__":
    what = sys.argv[1]
    print("some library chatter", file=sys.stderr)
    if what == "fail":
        fail("group_size 100 does not divide 576", field="method.group_size")
    if what == "engine":
        fail("the tool ran out of memory", kind="engine")
    if what == "crash":
        raise RuntimeError("boom")
    print(json.dumps({"done": True}), flush=True)
