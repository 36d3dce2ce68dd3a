"""``cached_njit``: ``numba.njit(cache=True, ...)`` whose on-disk cache is stamped with the
sources of the whole ``fast`` package, not only the function's own file.

numba keeps a cached function while the content of the file that defines it is unchanged. The
compiled functions here inline and call one another across files (``lanes.py`` inlines the gate
arithmetic of ``fused.py``, the kernel of ``kernel.py`` and the barriers of ``sync.py``), so an
edit to one of those would leave another file's machine code stale in the cache. Here every
cached function's stamp is one hash over the ``fast`` package's files: an edit to any of them
recompiles all of them once; edits elsewhere recompile nothing. What a compiled function reads
of Python globals is frozen into it: such values must come from this package too, or be in the
stamp (the kernel's vector width is).

The cache goes where numba's would, in numba's order: NUMBA_CACHE_DIR if set, else the
package's ``__pycache__`` if writable, else the user-wide cache. Nothing of numba is changed
globally; only dispatchers made here get this cache. (NUMBA_CACHE_LOCATOR_CLASSES, where set,
replaces these locators and with them this stamp.)"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numba
from numba.core import caching
from numba.core.dispatcher import Dispatcher

from lstm_scratch.fast.host import kernel_isa

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def package_stamp() -> bytes:
    """sha256 over the names and contents of the ``fast`` package's files and the vectors the
    kernel is compiled for (``host.kernel_isa``), read once per process, when the first
    compiled function is made."""
    digest = hashlib.sha256(kernel_isa().encode())
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(source).digest())
    return digest.digest()


class _PackageStamp:
    """Locator mixin: ``package_stamp`` in place of the hash of the function's own file."""

    def get_source_stamp(self):
        return package_stamp()


class _UserProvidedLocator(_PackageStamp, caching.UserProvidedCacheLocator):
    pass


class _InTreeLocator(_PackageStamp, caching.InTreeCacheLocator):
    pass


class _UserWideLocator(_PackageStamp, caching.UserWideCacheLocator):
    pass


class _PackageCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = (_UserProvidedLocator, _InTreeLocator, _UserWideLocator)  # numba's order


class _PackageCache(caching.FunctionCache):
    _impl_class = _PackageCacheImpl


def cached_njit(**options):
    """``numba.njit(**options)`` with the on-disk cache stamped by ``package_stamp``."""

    def decorate(function):
        dispatcher = numba.njit(**options)(function)
        if isinstance(dispatcher, Dispatcher):  # (under NUMBA_DISABLE_JIT, the plain function)
            dispatcher._cache = _PackageCache(dispatcher.py_func)  # as enable_caching() does
        return dispatcher

    return decorate
