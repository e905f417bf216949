"""Names in Twizzler's namespace format, across programs."""

import json
import uuid


def test_names_across_programs(twzrun):
    base = f"/names-{uuid.uuid4().hex}"
    made = twzrun(f"""
import json, libtwz
o = libtwz.Object.create(name="{base}/deep/er/obj")
o.write(0x1000, b"named")
libtwz.names.symlink("{base}/link", "{base}/deep/er/obj")
try:
    libtwz.Object.create(name="{base}/deep/er/obj")
except libtwz.TwzError as e:
    dup = e.errno
print(json.dumps({{"id": str(o.id), "dup": dup}}))
""")
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    assert first["dup"] == 17
    used = twzrun(f"""
import json, libtwz
from twzlinux.abi import constants as c
o = libtwz.Object.open("{base}/deep/er/obj")
via_link = libtwz.Object.open("{base}/link")
listing = [[n, t] for n, _, t in libtwz.names.listdir("{base}")]
libtwz.names.remove("{base}/link")
try:
    libtwz.names.resolve("{base}/link")
except libtwz.TwzError as e:
    removed = e.errno
try:
    libtwz.names.resolve("{base}/deep/er/obj/below")
except libtwz.TwzError as e:
    notdir = e.errno
print(json.dumps({{"id": str(o.id), "data": o.read(0x1000, 5).decode(),
                  "link": str(via_link.id), "listing": sorted(listing), "removed": removed,
                  "notdir": notdir, "ns": c.NAME_ENT_NAMESPACE, "sym": c.NAME_ENT_SYMLINK}}))
""")
    assert used.returncode == 0, used.stderr
    out = json.loads(used.stdout)
    assert out["id"] == first["id"] == out["link"]
    assert out["data"] == "named"
    assert out["listing"] == sorted([["deep", out["ns"]], ["link", out["sym"]]])
    assert out["removed"] == 2
    assert out["notdir"] == 20
