# timeout: 240
# A service bound into a job with `rcrun up`: the job starts only when the service's
# port accepts, reaches it by its alias, and the service is gone after the grace period.
. "$VM_SCENARIOS/lib.sh"

rcrun pull -q "$BUSYBOX_LAYOUT" >/dev/null
cat > rcrun-up.yaml <<'YAML'
services:
  web:
    image: busybox:1.35
    # listens only after a second: the job must not start before
    command: ["sh", "-c", "sleep 1; mkdir -p /srv && echo served-by-the-service > /srv/index.html && exec httpd -f -p 8080 -h /srv"]
    ports: [8080]
jobs:
  fetch:
    image: busybox:1.35
    bind:
      site: web
    run: wget -q -O- http://site:8080/
YAML
out=$(rcrun up -f rcrun-up.yaml --grace 1s 2>&1)
echo "$out"
expect_contains "the job's output" "served-by-the-service" "$out"

# the service goes after its grace period
retry 60 sh -c '! rcrun service ls | grep -q web'
retry 30 sh -c '[ -z "$(rcrun ps -q)" ]'

# a bad up-file: exit 125, with the place of the problem
printf 'services:\n  web:\n    image: busybox:1.35\n    portz: [1]\n' > bad.yaml
expect_status "a bad up-file" 125 rcrun up -f bad.yaml
expect_contains "the error" "bad.yaml:4:" "$out"
echo "service bound as site, health-checked, stopped after the grace period"
