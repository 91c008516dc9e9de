"""The built extension against the crash class of the 2026-11-28 GPU run (scripts/check_so_symbols.py): _C.so
must not carry libstdc++'s locale, facet or stream code of its own. The check is shown to fail on a library that
does (explicit instantiations of the string stream and num_put, compiled here)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import contres

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_so_symbols  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not found")

SECOND_COPY = """
#include <locale>
#include <sstream>
template class std::basic_ostringstream<char>;
template class std::num_put<char>;
std::string text(long v) { std::ostringstream s; s << v; return s.str(); }
"""


def test_extension_carries_no_libstdcxx_locale_code():
    so = contres._ext._C.__file__
    own = check_so_symbols.own_libstdcxx_locale(so)
    assert not own, f"{so} defines libstdc++ locale/stream symbols itself:\n" + "\n".join(own[:20])


def test_the_check_finds_a_second_copy(tmp_path):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        pytest.skip("no C++ compiler")
    (tmp_path / "copy.cpp").write_text(SECOND_COPY)
    so = tmp_path / "libcopy.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", str(tmp_path / "copy.cpp"), "-o", str(so)], check=True,
                   timeout=120)
    own = check_so_symbols.own_libstdcxx_locale(str(so))
    assert any("num_put" in s for s in own) and any("basic_ostringstream" in s for s in own), own
    assert check_so_symbols.main([str(so)]) == 1


@pytest.mark.parametrize("symbol,name", [
    ("std::locale::locale()", "std::locale::locale"),
    ("typeinfo for std::locale::facet", "std::locale::facet"),
    ("std::basic_ostream<char, std::char_traits<char> >& std::__ostream_insert<char, std::char_traits<char> >"
     "(std::basic_ostream<char, std::char_traits<char> >&, char const*, long)",
     "std::__ostream_insert<char, std::char_traits<char> >"),
    ("contres::describe(c10::ArrayRef<long>)", "contres::describe"),
    ("c10::operator<<(std::ostream&, c10::SymInt const&)", "c10::operator<<"),
])
def test_symbol_names(symbol, name):
    assert check_so_symbols.qualified_name(symbol) == name
