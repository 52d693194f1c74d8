"""`make audit`: a CycloneDX SBOM of the installed environment and a known-vulnerability audit.

Usage: python scripts/audit.py OUT_DIR
Writes OUT_DIR/sbom.cdx.json (cyclonedx-py, from the environment this Python runs in: every
installed distribution with its version, licence and package URL; needs no network) and
OUT_DIR/pip-audit.json (pip-audit against the Python Packaging Advisory data that PyPI's JSON
API serves for each release). Exit codes scripts can rely on:
  0  SBOM written, every dependency audited, no known vulnerability;
  1  at least one known vulnerability (each printed with its fix versions);
  2  the audit could not be done: a dependency that could not be audited (no answer from the
     vulnerability service, e.g. a network that reaches only a package index) is never counted
     as clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = "headbits"


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def write_sbom(out_dir: Path) -> int:
    sbom = out_dir / "sbom.cdx.json"
    subprocess.run([tool("cyclonedx-py"), "environment", "--of", "JSON", "-o", str(sbom),
                    "--pyproject", "pyproject.toml", "--output-reproducible", sys.executable],
                   check=True)
    components = len(json.loads(sbom.read_text())["components"])
    print(f"SBOM: {sbom} (CycloneDX, {components} components)")
    return components


def audit(out_dir: Path) -> int:
    report = out_dir / "pip-audit.json"
    subprocess.run([tool("pip-audit"), "--local", "--format", "json", "--progress-spinner", "off",
                    "--output", str(report)], check=False)
    if not report.is_file():
        print("pip-audit wrote no report: the audit could not be done", file=sys.stderr)
        return 2
    dependencies = [d for d in json.loads(report.read_text())["dependencies"]
                    if d["name"] != PROJECT]
    skipped = [d for d in dependencies if "skip_reason" in d]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            print(f"{dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {fixes})")
    print(f"audit: {len(dependencies)} dependencies, {len(dependencies) - len(skipped)} audited, "
          f"{len(skipped)} not audited, {len(vulnerable)} with known vulnerabilities "
          f"({report})")
    if vulnerable:
        return 1
    if skipped:
        print(f"audit incomplete: {len(skipped)} dependencies could not be audited, e.g. "
              f"{skipped[0]['skip_reason']!r}. pip-audit reads advisories from the package "
              "index's JSON API (or OSV with --vulnerability-service osv); this network does "
              "not serve them.", file=sys.stderr)
        return 2
    return 0


def main() -> int:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "build/audit")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_sbom(out_dir)
    return audit(out_dir)


if __name__ == "__main__":
    sys.exit(main())
