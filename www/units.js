// Byte counts and rates, exactly as the server's console writes them
// (gotaxy/units.py, which says why 1024s and the IEC symbols).  The rounding
// is done in integers, not with toFixed, so that both give the same text for
// the same value; tests/test_units.py checks that.  Exact below 2^53 / 10
// bytes (about 800 TiB).
"use strict";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

function formatBytes(count) {
  const n = Math.max(0, Math.floor(count + 0.5));
  if (n < 1024) return `${n} B`;
  for (let power = 1; power < UNITS.length; power++) {
    const size = 1024 ** power;  // a power of two: the division below is exact
    const tenths = Math.floor((n * 10 + size / 2) / size);
    if (tenths < 10240 || power === UNITS.length - 1) {
      return `${Math.floor(tenths / 10)}.${tenths % 10} ${UNITS[power]}`;
    }
  }
  throw new Error("unreachable");
}

const formatRate = (perSecond) => `${formatBytes(perSecond)}/s`;

if (typeof module !== "undefined") module.exports = { formatBytes, formatRate };
