"""Drop the symbol tables of a shared library, in pure Python (the build's `venv` stage, never the host).

Wheels ship their shared objects with the full `.symtab`/`.strtab` (and sometimes `.debug_*`): 89 of
libtorch_cpu.so's 434 MB are symbol names that only a debugger reads. The dynamic loader reads the program
headers and the segments they map (`.dynsym`, `.dynstr` and the rest of what `dlopen` needs live there), never
the section header table or the sections outside every segment. So, like `strip`, this keeps every byte up to
the end of the last segment unchanged, drops the non-loaded symbol and debug sections that lie after it, moves
the other trailing sections (`.comment`, notes, `.shstrtab`) down and writes a renumbered section header
table.

Only 64-bit little-endian ELF files (x86-64, aarch64) laid out that way are rewritten; anything else (another
class, a dropped section inside the mapped range, a kept section linking to a dropped one, extended section
numbering) is left exactly as it was. Standard library only: the base image's python3 runs it.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, replace
from pathlib import Path

_ELF_MAGIC = b"\x7fELF"
_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
_SHT_SYMTAB = 2
_SHT_NOBITS = 8
_SHF_ALLOC = 0x2
_SHF_INFO_LINK = 0x40
_SHN_LORESERVE = 0xFF00
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Section:
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def file_size(self) -> int:
        return 0 if self.type == _SHT_NOBITS else self.size


def strip_symbols(path: Path) -> int:
    """Rewrite the ELF file `path` without its symbol and debug sections; return the bytes saved (0: none)."""
    with path.open("rb") as elf:
        plan = _plan(elf)
        if plan is None:
            return 0
        mapped_end, sections, dropped, names = plan
        kept = [index for index in range(len(sections)) if index not in dropped]
        new_index = {old: new for new, old in enumerate(kept)}
        tmp = path.with_name(path.name + ".bake-strip")
        try:
            with tmp.open("wb") as out:
                elf.seek(0)
                _copy(elf, out, mapped_end)
                headers = _write_tail(elf, out, sections, kept, new_index, mapped_end)
                table_offset = _align(out.tell(), 8)
                out.write(b"\0" * (table_offset - out.tell()))
                for header in headers:
                    out.write(_SECTION_HEADER.pack(*header))
                elf.seek(0)
                fields = list(_HEADER.unpack(elf.read(_HEADER.size)))
                fields[6], fields[12], fields[13] = table_offset, len(kept), new_index[names]
                out.seek(0)
                out.write(_HEADER.pack(*fields))
            shutil.copymode(path, tmp)
            saved = path.stat().st_size - tmp.stat().st_size
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return saved


def _plan(elf) -> tuple[int, list[_Section], set[int], int] | None:
    """(end of the last mapped byte, the sections, the indexes to drop, .shstrtab's index); None: leave it."""
    raw = elf.read(_HEADER.size)
    if len(raw) < _HEADER.size or raw[:4] != _ELF_MAGIC or raw[4] != 2 or raw[5] != 1:
        return None
    header = _HEADER.unpack(raw)
    phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = (
        header[5],
        header[6],
        header[9],
        header[10],
        header[11],
        header[12],
        header[13],
    )
    if shnum == 0 or shnum >= _SHN_LORESERVE or shstrndx >= shnum or shentsize != _SECTION_HEADER.size:
        return None
    if phentsize != _PROGRAM_HEADER.size:
        return None
    mapped_end = max(_HEADER.size, phoff + phnum * phentsize)
    elf.seek(phoff)
    for _ in range(phnum):
        segment = _PROGRAM_HEADER.unpack(elf.read(_PROGRAM_HEADER.size))
        mapped_end = max(mapped_end, segment[2] + segment[5])  # p_offset + p_filesz
    elf.seek(shoff)
    sections = [_Section(*_SECTION_HEADER.unpack(elf.read(shentsize))) for _ in range(shnum)]
    elf.seek(sections[shstrndx].offset)
    names = elf.read(sections[shstrndx].size)
    dropped = set()
    for index, section in enumerate(sections):
        name = names[section.name : names.find(b"\0", section.name)]
        if section.type == _SHT_SYMTAB or name.startswith((b".debug", b".zdebug")):
            dropped.add(index)
            if section.type == _SHT_SYMTAB and section.link != shstrndx:
                dropped.add(section.link)
    if not dropped:
        return None
    for index in dropped:
        section = sections[index]
        if index == 0 or section.flags & _SHF_ALLOC or (section.file_size and section.offset < mapped_end):
            return None
    for index, section in enumerate(sections):
        if index in dropped:
            continue
        if section.link in dropped or (section.flags & _SHF_INFO_LINK and section.info in dropped):
            return None
    return mapped_end, sections, dropped, shstrndx


def _write_tail(
    elf, out, sections: list[_Section], kept: list[int], new_index: dict[int, int], mapped_end: int
) -> list[tuple[int, ...]]:
    """Append the kept sections that lay past the mapped range; return every kept section's new header."""
    moved: dict[int, int] = {}
    for index in sorted(kept, key=lambda i: sections[i].offset):
        section = sections[index]
        if index == 0 or section.offset < mapped_end or not section.file_size:
            continue
        offset = _align(out.tell(), max(section.addralign, 1))
        out.write(b"\0" * (offset - out.tell()))
        elf.seek(section.offset)
        _copy(elf, out, section.size)
        moved[index] = offset
    headers = []
    for index in kept:
        section = sections[index]
        updated = replace(
            section,
            offset=moved.get(index, section.offset if section.offset < mapped_end else out.tell()),
            link=new_index[section.link] if section.link else 0,
            info=new_index[section.info] if section.flags & _SHF_INFO_LINK and section.info else section.info,
        )
        headers.append(
            (
                updated.name,
                updated.type,
                updated.flags,
                updated.addr,
                updated.offset,
                updated.size,
                updated.link,
                updated.info,
                updated.addralign,
                updated.entsize,
            )
        )
    return headers


def _copy(source, target, count: int) -> None:
    """Copy `count` bytes from `source`'s current position to `target`."""
    while count > 0:
        chunk = source.read(min(count, _COPY_CHUNK))
        if not chunk:
            raise ValueError("the ELF file ended early")
        target.write(chunk)
        count -= len(chunk)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment
