# A small closure for the demo: a program and a large data path it reads
# from, so that running the program shows how little of the closure is
# fetched.
let
  sh = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  };
  data = sh "ipnix-demo-data" ''
    mkdir -p $out/share
    echo "Hello from a store path mounted lazily out of IPFS." > $out/share/greeting
    head -c 32000000 /dev/urandom > $out/share/large-unused.bin
  '';
in sh "ipnix-demo-hello" ''
  mkdir -p $out/bin
  cp /bin/cat $out/bin/cat
  printf '#!/bin/sh\nexec "$(dirname "$0")/cat" "$(dirname "$0")/../../%s/share/greeting"\n' \
    "$(basename ${data})" > $out/bin/hello
  chmod 555 $out/bin/hello
''
