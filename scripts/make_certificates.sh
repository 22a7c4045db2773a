#!/usr/bin/env bash
# Make the TLS certificates of a SuperLink on 127.0.0.1 and the EC key pairs of SuperNodes.
#
#   scripts/make_certificates.sh DIR [NODES] [HOST]
#
# DIR/ca.crt, DIR/server.pem, DIR/server.key: a self-signed CA and the SuperLink's certificate
# (subjectAltName IP:HOST, DNS:localhost; HOST defaults to 127.0.0.1), for flower-superlink
# --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile and flower-supernode --root-certificates.
# DIR/keys/supernode-<i>{,.pub}, i = 1..NODES (default 3): OpenSSH ECDSA P-384 key pairs for
# flower-supernode --auth-supernode-private-key/--auth-supernode-public-key and
# `flwr supernode register`. For prototypes and tests: in production use your organisation's PKI.
set -euo pipefail
DIR=${1:?usage: make_certificates.sh DIR [NODES] [HOST]}
NODES=${2:-3}
HOST=${3:-127.0.0.1}
mkdir -p "$DIR/keys"
cd "$DIR"
openssl genrsa -out ca.key 4096 2>/dev/null
openssl req -new -x509 -key ca.key -sha256 -days 365 -subj "/CN=fedlrs test CA" -out ca.crt
openssl genrsa -out server.key 4096 2>/dev/null
openssl req -new -key server.key -subj "/CN=$HOST" -out server.csr
printf "subjectAltName=IP:%s,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" "$HOST" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext
chmod 600 ca.key server.key
for i in $(seq 1 "$NODES"); do
  rm -f "keys/supernode-$i" "keys/supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "" -f "keys/supernode-$i"
done
echo "certificates and $NODES SuperNode key pairs in $DIR"
