"""The second copy of libstdc++ that crashed the GPU run, looked for in a built extension.

The 2026-11-28 backtrace: frame #0 a libstdc++ function inside _C.so, frame #1 the system libstdc++'s
ostream::_M_insert<long>, frame #2 libc10's operator<<(ostream&, SymInt). A library that defines libstdc++'s
locale, facet or stream code itself keeps its own locale registry, and a stream made by one copy and written by the
other crashes. So _C.so must define none of it (`nm -D --defined-only`): it uses the libstdc++ the process loads.

    python scripts/check_so_symbols.py PATH/_C.so     exit 1 (and the symbols) when it defines any

Also printed, for information: the out-of-line libc10 operator<< the library imports. torch's own inline headers
bring some (SymInt::expect_int's message, the device guards' DeviceType); our sources bring none
(tests/test_source_rules.py).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

# libstdc++'s locale, facets and streams (the templates it instantiates itself, declared extern in its headers).
LIBSTDCXX_LOCALE = re.compile(
    r"^std::(?:__cxx11::)?(?:locale\b|ctype<|ctype_base|num_put<|num_get<|numpunct<|__numpunct_cache<|codecvt<|"
    r"codecvt_base|collate<|moneypunct<|money_put<|money_get<|time_put<|time_get<|messages<|use_facet<|has_facet<|"
    r"__use_cache<|ios_base\b|basic_ios<|basic_ostream<|basic_istream<|basic_iostream<|basic_streambuf<|"
    r"basic_stringbuf<|basic_ostringstream<|basic_istringstream<|basic_stringstream<|__ostream_insert<|"
    r"__ostream_fill<|operator<<\s*<|operator>>\s*<|__convert_from_v|__convert_to_v|__int_to_char|__add_grouping)")
# Except the string streams' destructors, which every TU that destroys one defines (weak, implicitly generated:
# g++ 12 in C++20 emits ~basic_stringbuf wherever c10::str is used); they hold no locale state, and libstdc++'s
# own vtables keep its own copies.
IMPLICIT = re.compile(r"::~basic_\w*string\w*$")
PREFIXES = ("typeinfo name for ", "typeinfo for ", "vtable for ", "VTT for ", "guard variable for ",
            "construction vtable for ")


def qualified_name(demangled: str) -> str:
    """The entity a demangled symbol names: without its parameters, return type and special-name prefix."""
    for prefix in PREFIXES:
        if demangled.startswith(prefix):
            return demangled[len(prefix):]
    # Operator names hold brackets of their own: masked (same length) while brackets are counted.
    masked = re.sub(r"operator(<<=?|>>=?|<=>|<=|>=|<|>|\(\)|->\*?)", lambda m: "operator" + "#" * len(m.group(1)),
                    demangled)
    depth, cut = 0, len(masked)
    for i, c in enumerate(masked):  # parameters start at the first "(" outside template brackets
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            cut = i
            break
    head = masked[:cut]
    depth, start = 0, 0
    for i, c in enumerate(head):  # a return type ends at the last space outside template brackets
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == " " and depth == 0 and i + 1 < len(head) and head[i + 1] != "<" and not head[:i].endswith(","):
            start = i + 1
    head = demangled[:cut]
    return head[start:]


def symbols(path: str, defined: bool) -> list:
    nm = shutil.which("nm")
    if nm is None:
        raise RuntimeError("nm (binutils) is needed")
    flag = "--defined-only" if defined else "--undefined-only"
    out = subprocess.run([nm, "-D", "-C", flag, path], capture_output=True, text=True, check=True).stdout
    return [line.split(None, 2)[-1] if defined else line.split(None, 1)[-1] for line in out.splitlines() if line.strip()]


def own_libstdcxx_locale(path: str) -> list:
    """The libstdc++ locale, facet and stream symbols the library defines itself."""
    names = {s: qualified_name(s) for s in symbols(path, defined=True)}
    return sorted(s for s, name in names.items() if LIBSTDCXX_LOCALE.match(name) and not IMPLICIT.search(name))


def imported_libc10_streaming(path: str) -> list:
    return sorted({s for s in symbols(path, defined=False) if re.match(r"(?:c10|at)::operator<<", s)})


def main(argv) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    own = own_libstdcxx_locale(argv[0])
    for s in imported_libc10_streaming(argv[0]):
        print(f"imports {s}")
    if own:
        print(f"{argv[0]} defines {len(own)} libstdc++ locale/stream symbols itself (a second libstdc++ copy):")
        print("\n".join("  " + s for s in own[:40]))
        return 1
    print(f"{argv[0]}: no libstdc++ locale/stream symbols of its own")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
