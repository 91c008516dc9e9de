"""The crash class of the 2026-11-28 GPU run, kept out of csrc/ by reading the source.

libc10 formats SymInt, Device, Scalar, Tensor and its other types with operator<< functions compiled into libc10
(out of line). A message built here -- a std::ostream made in our library, by an explicit `os << ...` or by the
c10::str behind TORCH_CHECK, TORCH_WARN and friends -- and written to by one of them crossed two copies of
libstdc++ on the GPU machine's image and crashed the process (frame #2 libc10's operator<<(ostream&, SymInt)).
So no such value may be streamed: messages format through describe() (csrc/describe.h), Device::str(),
c10::toString(ScalarType). test_binary.py checks the other half: that _C.so carries no libstdc++ locale code.

The scan is a small C++ reader, not a compiler: it knows the declarations of each file (locals, parameters and
struct fields, nearest declaration first) and the methods that return such types, follows member chains, indexing
and arithmetic, and checks every argument that a check/warn macro or c10::str streams and every operand of <<.
The planted example below shows it failing on each pattern it is meant to catch, and passing the safe forms.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for ext in ("*.h", "*.cpp", "*.cu", "*.cuh") for p in (ROOT / "csrc").rglob(ext))

# libc10 (and libtorch) types whose operator<< is compiled out of line.
HAZARDOUS = {"SymInt", "SymFloat", "SymBool", "SymNode", "SymIntArrayRef", "Device", "DeviceType", "Scalar",
             "Tensor", "TensorBase", "TensorOptions", "TypeMeta", "Stream", "DispatchKey", "DispatchKeySet",
             "IValue", "Storage", "DeprecatedTypeProperties", "Layout", "MemoryFormat", "QScheme"}
# Layout, MemoryFormat and QScheme have inline operator<< today; they are listed because nothing gains from
# streaming them and an upgrade may move them out of line.
# Methods (on any object) that return such a value, and what they return.
HAZARDOUS_METHODS = {
    "sym_size": "SymInt", "sym_stride": "SymInt", "sym_numel": "SymInt", "sym_nbytes": "SymInt",
    "sym_storage_offset": "SymInt", "sym_sizes": "SymIntArrayRef", "sym_strides": "SymIntArrayRef",
    "device": "Device", "options": "TensorOptions", "dtype": "TypeMeta", "item": "Scalar", "type": "DeprecatedTypeProperties",
    "key_set": "DispatchKeySet", "storage": "Storage", "layout": "Layout", "suggest_memory_format": "MemoryFormat",
    "stream": "Stream", "unwrap": "Stream", "as_int": "SymInt",
}
# Macros whose arguments after the first (the condition) are streamed, and those that stream all of them.
CHECK_MACROS = re.compile(r"\b(TORCH_CHECK|TORCH_CHECK_(?:VALUE|TYPE|INDEX|NOT_IMPLEMENTED|LINALG|ALWAYS_SHOW_CPP_STACKTRACE)"
                          r"|TORCH_INTERNAL_ASSERT(?:_DEBUG_ONLY)?|C10_THROW_ERROR)\s*\(")
ALL_ARG_MACROS = re.compile(r"\b(TORCH_WARN(?:_ONCE|_DEPRECATION)?|AT_ERROR|TORCH_CHECK_(?:EQ|NE|LE|LT|GE|GT)"
                            r"|c10::str|TORCH_INTERNAL_ASSERT_EQ)\s*\(")
IDENT = r"[A-Za-z_]\w*"
KEYWORDS = {"return", "const", "auto", "if", "else", "for", "while", "switch", "case", "new", "delete", "throw",
            "static", "constexpr", "inline", "using", "namespace", "struct", "class", "typename", "template",
            "sizeof", "decltype", "operator", "this", "true", "false", "nullptr", "co_return", "default"}


def clean(text: str) -> str:
    """Comments removed, string and character literals emptied; offsets and newlines kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)), (i := j)
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j])), (i := j)
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (j - i - 1) + c), (i := j + 1)
        else:
            out.append(c), (i := i + 1)
    return "".join(out)


def split_top(expr: str, seps: tuple) -> list:
    """expr split at separators outside (), [], {}."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            sep = next((s for s in seps if expr.startswith(s, i)), None)
            if sep:
                parts.append(expr[start:i])
                i += len(sep)
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return parts


def closing(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at open_at."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


TYPE_RE = re.compile(r"(?<![\w:])(?:(?:const|volatile|struct|typename)\s+)*((?:" + IDENT + r"::)*" + IDENT +
                     r")(\s*<[^;(){}]*?>)?(?:\s+const)?(\s*[&*]+\s*|\s+)(" + IDENT + r")\s*(?=[,;)=({\[:])")


class Declarations:
    """Every simple declaration (type, name) of a text with its offset; struct fields by struct name."""

    def __init__(self, text: str, fields: dict):
        self.decls = []  # (offset, name, type, template argument)
        for m in TYPE_RE.finditer(text):
            base, targs, name = m.group(1).split("::")[-1], m.group(2) or "", m.group(4)
            if base in KEYWORDS or name in KEYWORDS:
                continue
            self.decls.append((m.start(4), name, base, targs))
            # further declarators of one declaration: "c10::SymInt B, C, H, W;"
            rest = text[m.end(4):m.end(4) + 200]
            for more in re.finditer(r"\s*,\s*(" + IDENT + r")\s*(?=[,;=])", rest):
                if more.start() != 0 and not re.fullmatch(r"(\s*,\s*" + IDENT + r"\s*)+", rest[:more.start()]):
                    break
                self.decls.append((m.end(4) + more.start(1), more.group(1), base, targs))
        self.fields = fields

    def type_of(self, name: str, before: int):
        best = None
        for off, n, t, targs in self.decls:
            if n == name and off < before:
                best = (t, targs)
        return best


def struct_fields(texts) -> dict:
    """struct/class name -> {field name: (type, template argument)} over all files."""
    fields = {}
    for text in texts:
        for m in re.finditer(r"\b(?:struct|class)\s+(?:__attribute__\(\([^)]*\)\)\s+)?(" + IDENT + r")[^;{]*\{", text):
            body_end = closing(text, m.end() - 1)
            body = text[m.end():body_end]
            table = fields.setdefault(m.group(1), {})
            for off, name, t, targs in Declarations(body, {}).decls:
                table.setdefault(name, (t, targs))
    return fields


def element_of(t):
    """The element type of a container type (vector<SymInt>, SymIntArrayRef, Tensor indexed)."""
    base, targs = t
    if base == "SymIntArrayRef":
        return ("SymInt", "")
    if base in ("Tensor", "TensorBase"):
        return ("Tensor", "")
    inner = re.findall(IDENT, targs)
    return (inner[-1], "") if inner else None


def type_of_expr(expr: str, pos: int, decls: Declarations):
    """The (type, template argument) an expression evaluates to, when the reader can tell; None otherwise."""
    expr = expr.strip()
    if not expr:
        return None
    for part in split_top(expr, ("?",))[1:]:  # a ? b : c: either branch
        for branch in split_top(part, (":",)):
            t = type_of_expr(branch, pos, decls)
            if t:
                return t
    terms = split_top(expr, ("==", "!=", "+", "-", "*", "/", "%"))
    if len(terms) > 1:  # arithmetic and comparisons of SymInts give SymInts and SymBools; of tensors, tensors
        for term in terms:
            t = type_of_expr(term, pos, decls)
            if t and t[0] in HAZARDOUS:
                return ("SymBool", "") if ("==" in expr or "!=" in expr) and t[0] == "SymInt" else t
        return None
    m = re.match(r"\(\s*(.*)\s*\)$", expr, re.S)
    if m and closing(expr, 0) == len(expr) - 1:
        return type_of_expr(m.group(1), pos, decls)
    m = re.match(r"(?:(?:c10|at|caffe2)::)?(" + IDENT + r")\s*(?=[({])", expr)  # a constructor call
    t = None
    if m and m.group(1) in HAZARDOUS:
        t, rest = (m.group(1), ""), expr[closing(expr, m.end()):][1:]
    else:
        m = re.match(r"((?:" + IDENT + r"::)*" + IDENT + r")", expr)
        if not m:
            return None
        name, rest = m.group(1), expr[m.end():]
        if rest.lstrip().startswith("("):  # a free function's result: unknown
            rest = rest.lstrip()
            rest = rest[closing(rest, 0) + 1:]
        else:
            t = decls.type_of(name.split("::")[-1], pos)
    while rest.strip():
        rest = rest.lstrip()
        m = re.match(r"(?:\.|->)\s*(" + IDENT + r")", rest)
        if m:
            member, rest = m.group(1), rest[m.end():].lstrip()
            if rest.startswith("("):
                rest = rest[closing(rest, 0) + 1:]
                t = (HAZARDOUS_METHODS[member], "") if member in HAZARDOUS_METHODS else None
            else:
                t = decls.fields.get(t[0], {}).get(member) if t else None
            continue
        if rest.startswith("["):
            rest = rest[closing(rest, 0) + 1:]
            t = element_of(t) if t else None
            continue
        return None  # something the reader does not follow
    return t


def streamed(text: str):
    """(offset, expression) of everything the text streams into a message or an ostream."""
    for pattern, skip in ((CHECK_MACROS, 1), (ALL_ARG_MACROS, 0)):
        for m in pattern.finditer(text):
            open_at = m.end() - 1
            args = split_top(text[open_at + 1:closing(text, open_at)], (",",))
            skip_here = 2 if m.group(1) == "C10_THROW_ERROR" else skip
            offset = open_at + 1
            for i, arg in enumerate(args):
                if i >= skip_here:
                    yield offset, arg
                offset += len(arg) + 1
    for m in re.finditer(r"<<(?!<)", text):
        if text[m.start() - 1:m.start()] == "<":
            continue
        start, depth, i = m.end(), 0, m.end()
        while i < len(text):
            c = text[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (c in ",;" or text.startswith("<<", i)):
                break
            i += 1
        yield start, text[start:i]


def violations(sources: dict) -> list:
    """'file:line: expression (type)' for every streamed value of a hazardous type. sources: name -> text."""
    cleaned = {name: clean(text) for name, text in sources.items()}
    fields = struct_fields(cleaned.values())
    found = []
    for name, text in cleaned.items():
        decls = Declarations(text, fields)
        for offset, expr in streamed(text):
            t = type_of_expr(expr, offset, decls)
            if t and t[0] in HAZARDOUS:
                line = text.count("\n", 0, offset) + 1
                found.append(f"{name}:{line}: {' '.join(expr.split())} ({t[0]})")
    return found


PLANTED = """
#include <c10/core/SymInt.h>
struct Dims { c10::SymInt B, C; int64_t n; };
struct Problem { int64_t B, C; };
void f(const at::Tensor& x, const Dims& d, const Problem& p, std::ostream& os, int64_t k, c10::SymIntArrayRef v) {
  TORCH_CHECK(k > 0, "sizes ", x.sym_sizes());                               // 6: sym_sizes
  TORCH_CHECK_VALUE(k > 0, "C = ", d.C, " and ", p.C);                      // 7: Dims::C only
  os << "on " << x.device() << " of " << k;                                  // 8: Device
  TORCH_WARN("n = ", d.n, " of ", describe(d.B), x.device().str(), p.B);    // safe
  TORCH_CHECK(x.sym_size(0) == d.B, "ok ", k, " ", (1u << k));              // safe: the condition is not streamed
  os << (1u << k) << describe(x.sym_sizes()) << c10::toString(x.scalar_type());  // safe
  const c10::SymInt s = x.sym_size(1);
  auto msg = c10::str("s = ", s * 2);                                        // 13: SymInt arithmetic
  TORCH_CHECK(k, "scalar ", x.item(), " first ", v[0]);                     // 14: Scalar, SymInt element
  TORCH_CHECK_EQ(x.sym_numel(), 4);                                          // 15: both sides streamed
  TORCH_WARN_ONCE("tensor ", k > 1 ? x : x.mul(2));                          // 16: a Tensor
  os << d.B.maybe_as_int().value_or(0) << std::to_string(k);                // safe
}
"""


def test_the_scan_finds_each_planted_pattern_and_passes_the_safe_forms():
    found = violations({"planted.cpp": PLANTED})
    lines = sorted({int(v.split(":")[1]) for v in found})
    assert lines == [6, 7, 8, 13, 14, 15, 16], "\n".join(found)
    assert any("d.C (SymInt)" in v for v in found) and not any("p.C" in v for v in found), found
    assert any("v[0] (SymInt)" in v for v in found) and any("x.item() (Scalar)" in v for v in found), found


def test_no_libc10_type_is_streamed_in_csrc():
    assert SOURCES, "no sources found"
    found = violations({str(p.relative_to(ROOT)): p.read_text() for p in SOURCES})
    assert not found, ("libc10 types streamed into messages (use describe() of csrc/describe.h, Device::str(), "
                       "c10::toString):\n" + "\n".join(found))


@pytest.mark.parametrize("snippet,why", [
    ('void g(const c10::Device& dev) { TORCH_CHECK(false, "on ", dev); }', "a Device parameter"),
    ('void g(at::Tensor t) { TORCH_WARN("t = ", t); }', "a Tensor by value"),
    ('void g(const at::Tensor& t) { std::cerr << t.options() << std::endl; }', "TensorOptions into std::cerr"),
    ('void g(const at::Tensor& t) { TORCH_CHECK(t.defined(), "dtype ", t.dtype()); }', "a TypeMeta"),
    ('struct S { std::vector<c10::SymInt> sizes; };\nvoid g(const S& s) { TORCH_CHECK(0, s.sizes[1]); }',
     "an element of a vector of SymInts in a struct"),
    ('void g(const at::Tensor& t) { C10_THROW_ERROR(ValueError, "x ", t.sym_size(0)); }', "C10_THROW_ERROR"),
])
def test_the_scan_catches(snippet, why):
    assert violations({"snippet.cpp": snippet}), why
