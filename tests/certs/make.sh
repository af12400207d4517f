#!/usr/bin/env bash
# Makes the test certificates in this folder (checked in; rerun to renew them, they are valid
# for 100 years). Requires openssl 3. Layout:
#   ca.pem                      root CA that tests trust
#   chain.pem / server.key      leaf (localhost, 127.0.0.1) + intermediate; PKCS#8 EC key
#   rsa-chain.pem / rsa.key     leaf + intermediate; RSA key in PKCS#1 ("BEGIN RSA PRIVATE KEY")
#   ec-chain.pem / ec.key       leaf + intermediate; EC key in SEC1 ("BEGIN EC PRIVATE KEY")
#   rotated-chain.pem / rotated.key   a second leaf (CN "rotated") for reload tests
#   expired-chain.pem / expired.key   a leaf that expired in 2001
#   client-ca.pem, client.pem / client.key   mTLS client CA and a client certificate
set -euo pipefail
cd "$(dirname "$0")"
rm -rf work && mkdir work
DAYS=36500

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ext_leaf="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
ext_ca="basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign"

ec_key work/ca.key
openssl req -x509 -new -key work/ca.key -subj "/CN=weir test root" -days $DAYS -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

ec_key work/int.key
openssl req -new -key work/int.key -subj "/CN=weir test intermediate" -out work/int.csr
openssl x509 -req -in work/int.csr -CA ca.pem -CAkey work/ca.key -CAcreateserial -days $DAYS \
  -extfile <(echo "$ext_ca") -out work/int.pem 2>/dev/null

leaf() { # name keyfile cn
  openssl req -new -key "$2" -subj "/CN=$3" -out "work/$1.csr"
  openssl x509 -req -in "work/$1.csr" -CA work/int.pem -CAkey work/int.key -CAcreateserial \
    -days $DAYS -extfile <(echo "$ext_leaf") -out "work/$1.pem" 2>/dev/null
  cat "work/$1.pem" work/int.pem > "$1-chain.pem"
}

ec_key server.key && leaf server server.key localhost && mv server-chain.pem chain.pem
openssl genrsa -traditional -out rsa.key 2048 2>/dev/null && leaf rsa rsa.key localhost
openssl ecparam -genkey -name prime256v1 -noout -out ec.key && leaf ec ec.key localhost
ec_key rotated.key && leaf rotated rotated.key rotated

# An expired leaf: `openssl ca` is the tool that takes explicit start and end dates.
ec_key expired.key
openssl req -new -key expired.key -subj "/CN=expired" -out work/expired.csr
mkdir -p work/ca && touch work/ca/index.txt && echo 1000 > work/ca/serial
cat > work/ca.cnf <<CNF
[ca]
default_ca = test
[test]
dir = work/ca
database = work/ca/index.txt
serial = work/ca/serial
new_certs_dir = work/ca
default_md = sha256
policy = anything
copy_extensions = none
[anything]
commonName = supplied
[leaf]
$ext_leaf
CNF
openssl ca -batch -config work/ca.cnf -cert work/int.pem -keyfile work/int.key -extensions leaf \
  -startdate 20000101000000Z -enddate 20010101000000Z -in work/expired.csr -out work/expired.pem \
  -notext 2>/dev/null
cat work/expired.pem work/int.pem > expired-chain.pem

# mTLS: a separate client CA and one client certificate.
ec_key work/client-ca.key
openssl req -x509 -new -key work/client-ca.key -subj "/CN=weir test client CA" -days $DAYS \
  -out client-ca.pem -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"
ec_key client.key
openssl req -new -key client.key -subj "/CN=test client" -out work/client.csr
openssl x509 -req -in work/client.csr -CA client-ca.pem -CAkey work/client-ca.key -CAcreateserial \
  -days $DAYS -extfile <(printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth') \
  -out client.pem 2>/dev/null

rm -rf work ./*.srl
echo "made: $(ls)"
