# Two containers on a user-defined network reach each other by alias and by name
# through dnsd, rootless, on the guest's kernel (bridge, veth, nf_tables).
. "$VM_SCENARIOS/lib.sh"

rcrun pull -q "$BUSYBOX_LAYOUT" >/dev/null
rcrun network create vmnet >/dev/null
rcrun run -d --name web --network vmnet --network-alias www busybox:1.35 \
  sh -c 'mkdir -p /srv && echo "hello from web" > /srv/index.html && exec httpd -f -p 8080 -h /srv' >/dev/null
web_ip=$(rcrun inspect web | sed -n 's/.*"ip_address": *"\([0-9.]*\)".*/\1/p; s/.*"IPAddress": *"\([0-9.]*\)".*/\1/p' | head -n1)

# the client resolves the alias (busybox nslookup asks the resolver in resolv.conf:
# dnsd) and fetches the page; the server may still be starting, so the client retries
out=$(rcrun run --rm --network vmnet busybox:1.35 sh -c '
  nslookup www; nslookup web
  i=0; until wget -q -O- http://www:8080/; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done')
echo "$out"
expect_contains "the page by alias" "hello from web" "$out"
[ -z "$web_ip" ] || expect_contains "nslookup answers the server's address" "$web_ip" "$out"
expect_eq "the page by name" "hello from web" "$(rcrun run --rm --network vmnet busybox:1.35 wget -q -O- http://web:8080/)"

# a name nobody has: NXDOMAIN from dnsd (no upstream in the guest), not a hang
expect_status "an unknown name" 1 rcrun run --rm --network vmnet busybox:1.35 nslookup nobody-has-this
rcrun rm -f web >/dev/null
rcrun network rm vmnet >/dev/null
echo "alias and name resolved through dnsd"
