#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from Debian bookworm's `kubernetes` source
# package into a cache outside the clone, keyed by version, so a machine pays the ~12 CPU-minute
# cold build once. Why a source build and not a download: the machine reaches only Debian's
# archive, and Debian ships etcd as a binary but the control plane only as source.
#
# GOPATH mode (GO111MODULE=off) because upstream 1.20 and Debian build that way; module mode fails
# on the vendored tree. The tarball omits the generated OpenAPI definitions, so openapi-gen is built
# from vendor/ and run with the same package selection as upstream's Makefile (KUBE_OPENAPI_DIRS).
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE="${PHASEGATE_K8S_CACHE:-/var/cache/phasegate/kubernetes-$K8S_VERSION}"
BIN="$CACHE/bin"
APT_PACKAGES="etcd-server golang-go openssl dpkg-dev"

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && command -v etcd >/dev/null; then
  echo "k8s: $K8S_VERSION cached in $BIN"
  exit 0
fi

started=$(date +%s)

missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
src_list=/etc/apt/sources.list.d/phasegate-deb-src.sources
if [ -n "$missing" ] || [ ! -e "$src_list" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "k8s: needs root to install Debian packages:$missing and a deb-src entry" >&2
    exit 1
  fi
  # deb-src for exactly the archives and suites apt already uses, so the source matches the binaries.
  python3 - "$src_list" <<'PY'
import glob, sys
out = []
for path in glob.glob("/etc/apt/sources.list.d/*.sources"):
    if path == sys.argv[1]:
        continue
    for stanza in open(path).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith((" ", "#")):
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        if "deb" in fields.get("Types", "").split() and "debian" in fields.get("URIs", ""):
            if "deb-src" in fields["Types"].split():
                continue
            out.append("\n".join(
                f"{k}: {'deb-src' if k == 'Types' else v}" for k, v in fields.items()))
try:
    for line in open("/etc/apt/sources.list"):
        parts = line.split()
        if parts and parts[0] == "deb" and "debian" in line:
            out.append("Types: deb-src\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg"
                       % (parts[1], parts[2], " ".join(parts[3:])))
except FileNotFoundError:
    pass
if not out:
    sys.exit("k8s: no Debian archive found in the apt sources to add a deb-src entry for")
open(sys.argv[1], "w").write("\n\n".join(out) + "\n")
PY
  echo "k8s: installing Debian packages:${missing:- (none)}; deb-src in $src_list"
  # Other jobs on the machine may hold apt's locks: wait for them rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  echo "k8s: $K8S_VERSION cached in $BIN"
  exit 0
fi

work="$CACHE/src"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
echo "k8s: building kube-apiserver and kube-controller-manager $K8S_VERSION into $BIN (first time only, ~12 CPU-minutes)"
apt-get source --download-only kubernetes >/dev/null
orig=$(ls kubernetes_*.orig.tar.* | head -1)
upstream="${orig#kubernetes_}"; upstream="${upstream%.orig.tar.*}"
# Debian versions a downgrade as 1.20.5+really1.20.2: the tree is what follows "really".
upstream="${upstream##*+really}"
if [ "v$upstream" != "$K8S_VERSION" ]; then
  echo "k8s: Debian's source is $upstream, this script builds $K8S_VERSION" >&2
  exit 1
fi
mkdir unpacked
tar -xf "$orig" -C unpacked
tree=$(find unpacked -mindepth 1 -maxdepth 1 -type d)

# The Go cache (1.3 GB) goes with the tree: the binaries are what is kept.
export GOPATH="$work/gopath" GO111MODULE=off GOCACHE="$work/gocache"
mkdir -p "$GOPATH/src/k8s.io"
mv "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
# The same selection as upstream's Makefile.generated_files for the KUBE target: Go files under the
# tree (staging named as its vendor/ path, the rest of vendor/ pruned) with a `// +k8s:` tag, minus
# code-generator and sample-apiserver, whose directories mention +k8s:openapi-gen=.
dirs=$(find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
  | sed 's|^\./staging/src|vendor|; s|^\./||' \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
  | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
  | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
"$work/openapi-gen" --logtostderr -i "$dirs" \
  -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h hack/boilerplate/boilerplate.generatego.txt -r "$work/api-rule-violations.list"

# As hack/lib/version.sh does: both version packages, or /version still says v0.0.0-master.
# The commit is the one the archive's base.go was exported from.
commit=$(sed -n 's/.*gitCommit *= *"\([0-9a-f]\{40\}\)".*/\1/p' staging/src/k8s.io/component-base/version/base.go)
ldflags="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitCommit=$commit"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
mkdir -p "$BIN.tmp"
go build -ldflags "$ldflags" -o "$BIN.tmp/" ./cmd/kube-apiserver ./cmd/kube-controller-manager
rm -rf "$BIN"
mv "$BIN.tmp" "$BIN"
"$BIN/kube-apiserver" --version
rm -rf "$work"
echo "k8s: first build took $(( $(date +%s) - started )) s"
