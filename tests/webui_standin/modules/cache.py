"""Stand-in: the WebUI's cache (1.10's modules/cache.py interface): sections of one dict kept in memory, written to
`cache_filename` (cache.json in the data dir) by dump_cache; here at once, where the WebUI waits 5 s in a thread."""

import json
import os
import threading

from modules import paths_internal

cache_data = None
cache_lock = threading.Lock()
dumps = 0  # how many times dump_cache ran (the tests look)


def cache_filename() -> str:
    return os.path.join(paths_internal.data_path, "cache.json")


def cache(subsection):
    global cache_data
    if cache_data is None:
        with cache_lock:
            try:
                with open(cache_filename(), encoding="utf8") as f:
                    cache_data = json.load(f)
            except FileNotFoundError:
                cache_data = {}
    return cache_data.setdefault(subsection, {})


def dump_cache():
    global dumps
    with cache_lock:
        with open(cache_filename(), "w", encoding="utf8") as f:
            json.dump(cache_data, f, indent=4)
        dumps += 1
