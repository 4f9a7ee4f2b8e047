"""Download Amazon 5-core review and metadata files: reads the public host (or a mirror folder / URL
prefix), writes RAW_DIR/reviews_<Category>_5.json.gz + meta_<Category>.json.gz (2014 release) or
RAW_DIR/<Category>_5.json.gz + meta_<Category>.json.gz (2018 release).

Any category of either release (common/domains.py) by category or short name; `--release auto` takes
the 2014 files of a category that has them (the paper's release) and the 2018 files otherwise.

A file is first written to `<name>.part`, resumed with an HTTP Range request after a dropped
connection, verified by reading the gzip to its end, and only then renamed into place. A file
already in place that reads to its end is skipped; one that does not is completed or replaced.
"""

import argparse
import gzip
import http.client
import os
import shutil
import zlib
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from common.cli import UserError, run_main
from common.domains import PAPER_DOMAINS, RELEASES, category, release_files

# the McAuley lab's hosts: release -> (URL prefix of the review files, of the meta files)
HOSTS = {
    "2014": ("http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/",) * 2,
    "2018": ("https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/",
             "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/"),
}
DEFAULT_BASE_URL = HOSTS["2014"][0]
CHUNK = 1 << 20
DROPS = (http.client.HTTPException, ConnectionError, TimeoutError, OSError)


def verify_gzip(path):
    """None if `path` is a gzip file that reads to its end, else what is wrong with it."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(CHUNK):
                pass
    except gzip.BadGzipFile:
        return "not a gzip file"
    except EOFError:
        return "a truncated gzip"
    except (zlib.error, OSError) as err:
        return f"a corrupt gzip ({err})"
    return None


def _open(url, have, timeout):
    """The response for `url` from byte `have` on; None if the server says the range is complete."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416:
            return None
        raise UserError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (URLError, *DROPS) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot reach {url} ({reason}); if offline, set RAW_MIRROR (--mirror) to a "
                        f"folder or URL prefix holding the files") from None


def _receive(resp, part, have):
    """Append (206) or write (200) the body to `part`; True if it arrived in full."""
    resumed = resp.status == 206
    length = resp.headers.get("Content-Length")
    expected = int(length) if length is not None else None
    got = 0
    with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=expected, initial=0, unit="B", unit_scale=True, disable=None,
            desc=os.path.basename(part)[:-5]) as bar:
        try:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        except DROPS:
            return False
    return expected is None or got == expected


def fetch(url, part, timeout, retries):
    """Download `url` into `part`, resuming after dropped connections up to `retries` times."""
    for _ in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        resp = _open(url, have, timeout)
        if resp is None:
            return
        with resp:
            if _receive(resp, part, have):
                return
    raise UserError(f"{url}: the connection dropped {retries + 1} times; run again to resume")


def get_file(name, raw_dir, source, timeout, retries):
    """Make RAW_DIR/name a verified complete gzip; 'skipped' if it already was, else 'downloaded'."""
    dest = os.path.join(raw_dir, name)
    part = dest + ".part"
    if os.path.exists(dest):
        if verify_gzip(dest) is None:
            return "skipped"
        os.replace(dest, part)
    resumed = os.path.isfile(part) and os.path.getsize(part) > 0
    where = _copy_or_fetch(name, source, part, timeout, retries)
    problem = verify_gzip(part)
    if problem and resumed and not os.path.isdir(source):
        os.remove(part)  # a resumed file may continue a different one: fetch it whole once more
        fetch(where, part, timeout, retries)
        problem = verify_gzip(part)
    if problem:
        os.remove(part)
        raise UserError(f"{where}: the file is {problem}; nothing kept")
    os.replace(part, dest)
    return "downloaded"


def _copy_or_fetch(name, source, part, timeout, retries):
    if os.path.isdir(source):
        src = os.path.join(source, name)
        if not os.path.isfile(src):
            raise UserError(f"mirror folder has no {name}: {src}")
        shutil.copyfile(src, part)
        return src
    url = source.rstrip("/") + "/" + name
    fetch(url, part, timeout, retries)
    return url


def resolve_source(mirror):
    """A local folder or an http(s) URL prefix (None: the public hosts); UserError for anything else."""
    if not mirror:
        return None
    mirror = mirror.removeprefix("file://")
    if os.path.isdir(mirror) or mirror.startswith(("http://", "https://")):
        return mirror
    raise UserError(f"--mirror {mirror}: neither an existing folder nor an http(s):// URL prefix")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raw-dir", required=True)
    p.add_argument("--domains", nargs="+", default=PAPER_DOMAINS,
                   help="short names or categories (default: the paper's four)")
    p.add_argument("--release", choices=("auto", *RELEASES), default="auto",
                   help="auto: 2014 where the category has it, else 2018")
    p.add_argument("--mirror", default="", help="folder or URL prefix holding the same file names, used "
                                               "instead of the public hosts")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    p.add_argument("--retries", type=int, default=3, help="resumptions after a dropped connection")
    args = p.parse_args(argv)
    plans = [files_to_get(category(d), args.release) for d in args.domains]
    mirror = resolve_source(args.mirror)
    os.makedirs(args.raw_dir, exist_ok=True)
    for release, names in plans:
        for name, host in zip(names, HOSTS[release]):
            result = get_file(name, args.raw_dir, mirror or host, args.timeout, args.retries)
            print(f"{result}: {os.path.join(args.raw_dir, name)} ({release} release)")
    return 0


def files_to_get(cat, release):
    """(release, [reviews file name, meta file name]) of a category; UserError if it has no such release."""
    options = release_files(cat)
    if release != "auto":
        options = [o for o in options if o[0] == release]
    if not options:
        have = ", ".join(r for r, *_ in release_files(cat)) or "none"
        raise UserError(f"{cat} has no {release} release files to download (releases: {have})")
    return options[0][0], list(options[0][1:])


if __name__ == "__main__":
    run_main(main)
