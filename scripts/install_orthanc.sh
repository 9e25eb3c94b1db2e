#!/usr/bin/env bash
# Install what the PACS tests need from Debian packages: Orthanc and its DICOMweb plugin (the tests
# start their own Orthanc on 127.0.0.1, see tests/orthanc_fixture.py) and dicom3tools (dciodvfy
# checks the DICOM SEG objects against the standard).
#
# Idempotent and quick: when every package is installed it only makes sure the Debian "orthanc"
# service is stopped and not started at boot (it would listen on 8042 and 4242 for every address
# with the package's default configuration), without touching apt.
#
# orthanc-gdcm is not needed: SonoVLM retrieves instances in their stored transfer syntax
# (transfer-syntax=*), so Orthanc never decodes or transcodes JPEG 2000.
#
# Usage: scripts/install_orthanc.sh   (as root, or with sudo available)
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb dicom3tools)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: installing ${PACKAGES[*]} needs root (or sudo)" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} ..."
    # Keep the package's service from starting during installation: invoke-rc.d asks
    # /usr/sbin/policy-rc.d, and exit code 101 means "not allowed". An existing policy is kept.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    cleanup() { if [ "$own_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
    trap cleanup EXIT
    "${SUDO[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Debian service must not run: stop it and keep it from starting at boot, whatever the init.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now orthanc >/dev/null 2>&1 || true
else
    if [ -x /etc/init.d/orthanc ]; then
        "${SUDO[@]}" /etc/init.d/orthanc stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        "${SUDO[@]}" update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
fi
# Whatever the init system said, no Orthanc may be left on the package's ports.
if pids=$(pgrep -x Orthanc -u orthanc 2>/dev/null); then
    echo "stopping the packaged Orthanc service (pids $pids)"
    for pid in $pids; do "${SUDO[@]}" kill "$pid" || true; done
fi

for binary in Orthanc dciodvfy; do
    if ! command -v "$binary" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$binary" ]; then
        echo "error: $binary not found after installation" >&2
        exit 1
    fi
done
if ! ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1; then
    echo "error: the Orthanc DICOMweb plugin is missing after installation" >&2
    exit 1
fi
echo "Orthanc $(Orthanc --version 2>/dev/null | head -n 1 | awk '{print $2}') with DICOMweb, and dciodvfy: ready"
