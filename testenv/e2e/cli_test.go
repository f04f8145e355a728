package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

const vipUDP = "10.77.1.100:53/udp"

func TestCLINoDaemon(t *testing.T) {
	cmd := exec.Command(sluiceBin, "status")
	cmd.Env = append(os.Environ(), "SLUICE_SOCKET="+filepath.Join(t.TempDir(), "none.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no sluice daemon is running") {
		t.Fatalf("status without a daemon: err %v, output %q", err, out)
	}
}

// TestCLI drives every command in both output formats, and feeds bad
// input of each argument type.
func TestCLI(t *testing.T) {
	lab, d := labWithDaemon(t, 3)

	expect := func(out string, subs ...string) {
		t.Helper()
		for _, s := range subs {
			if !strings.Contains(out, s) {
				t.Fatalf("output lacks %q:\n%s", s, out)
			}
		}
	}
	expect(d.mustCLI(t, "version"), "sluice ")
	expect(d.mustCLI(t, "vip", "add", vipTCP), "vip 10.77.1.100:7/tcp added (revision 1)")
	expect(d.mustCLI(t, "vip", "add", vipUDP, "--forward", "dsr", "--udp-timeout", "10s", "--ring-size", "4099"), "revision 2")
	for _, b := range lab.Backends {
		a := b.Addr.Addr().String()
		d.mustCLI(t, "backend", "add", vipTCP, a, "--check", "tcp", "--interval", "100ms", "--timeout", "100ms", "--rise", "1", "--fall", "2")
		d.mustCLI(t, "backend", "add", vipUDP, a, "--check", "udp", "--interval", "100ms", "--timeout", "100ms", "--rise", "1", "--fall", "2", "--weight", "2")
	}
	d.waitStatus(t, "all up", allUp(6))

	// vip list, both formats
	expect(d.mustCLI(t, "vip", "list"), "VIP", "FORWARD", "10.77.1.100:7/tcp", "ipip", "10.77.1.100:53/udp", "dsr", "4099", "10s")
	var vips []state.VIP
	if err := json.Unmarshal([]byte(d.mustCLI(t, "vip", "list", "-o", "json")), &vips); err != nil || len(vips) != 2 {
		t.Fatalf("vip list -o json: %v %+v", err, vips)
	}
	// ring, both formats
	expect(d.mustCLI(t, "vip", "ring", vipTCP), "ring of 65537 slots", "10.77.0.11", "10.77.0.12", "10.77.0.13")
	var ring api.RingResponse
	if err := json.Unmarshal([]byte(d.mustCLI(t, "vip", "ring", vipUDP, "-o", "json")), &ring); err != nil || ring.RingSize != 4099 || len(ring.Slots) != 4099 {
		t.Fatalf("vip ring -o json: %v size %d slots %d", err, ring.RingSize, len(ring.Slots))
	}
	for _, s := range ring.Slots {
		if s == "" {
			t.Fatal("ring has an empty slot with 3 backends up")
		}
	}
	// status, both formats
	expect(d.mustCLI(t, "status"), "revision 8", "vip 10.77.1.100:7/tcp", "BACKEND", "10.77.0.11", "up")
	st := d.status(t)
	if st.Revision != 8 || len(st.VIPs) != 2 || len(st.VIPs[0].RingSHA256) != 64 {
		t.Fatalf("status -o json: %+v", st)
	}
	// stats, both formats (one sample)
	expect(d.mustCLI(t, "stats", "--every", "100ms"), "PPS", "10.77.0.12")
	var rates []map[string]any
	if err := json.Unmarshal([]byte(d.mustCLI(t, "stats", "--every", "100ms", "-o", "json")), &rates); err != nil || len(rates) != 8 {
		t.Fatalf("stats -o json: %v (%d rows)", err, len(rates))
	}
	// backend actions
	for _, step := range []struct{ action, state string }{{"drain", "draining"}, {"undrain", "up"}, {"disable", "disabled"}, {"enable", "up"}} {
		expect(d.mustCLI(t, "backend", step.action, vipTCP, "10.77.0.12"), step.action+" done")
		d.waitStatus(t, "state "+step.state, func(s api.Status) bool { return backendState(s, vipTCP, "10.77.0.12").State == step.state })
	}
	// events, both formats
	expect(d.mustCLI(t, "events"), "config", "backend drain 10.77.1.100:7/tcp 10.77.0.12")
	for _, line := range strings.Split(strings.TrimSpace(d.mustCLI(t, "events", "-o", "json")), "\n") {
		var e api.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events -o json line %q: %v", line, err)
		}
	}
	// export / apply: idempotent, dry run, one revision
	dir := t.TempDir()
	yamlFile := filepath.Join(dir, "state.yaml")
	if err := os.WriteFile(yamlFile, []byte(d.mustCLI(t, "export")), 0o600); err != nil {
		t.Fatal(err)
	}
	rev := d.status(t).Revision
	expect(d.mustCLI(t, "apply", "-f", yamlFile), fmt.Sprintf("no change (revision %d)", rev))
	raw, _ := os.ReadFile(yamlFile)
	changed := strings.Replace(string(raw), "forward: ipip", "forward: dsr", 1)
	os.WriteFile(yamlFile, []byte(changed), 0o600)
	expect(d.mustCLI(t, "apply", "-f", yamlFile, "--dry-run"), "~ vip 10.77.1.100:7/tcp", "dry run")
	expect(d.mustCLI(t, "apply", "-f", yamlFile), fmt.Sprintf("applied as revision %d", rev+1))
	var exported state.State
	if err := json.Unmarshal([]byte(d.mustCLI(t, "export", "-o", "json")), &exported); err != nil || exported.VIPs[0].Forward != "dsr" {
		t.Fatalf("export -o json after apply: %v %+v", err, exported.VIPs)
	}
	// backups
	bfile := filepath.Join(dir, "backup.json")
	expect(d.mustCLI(t, "backup", "save", bfile), fmt.Sprintf("saved revision %d", rev+1))
	expect(d.mustCLI(t, "backup", "list"), "REVISION", "state-")
	var arch []state.ArchiveEntry
	if err := json.Unmarshal([]byte(d.mustCLI(t, "backup", "list", "-o", "json")), &arch); err != nil || len(arch) == 0 {
		t.Fatalf("backup list -o json: %v %d", err, len(arch))
	}
	good, _ := os.ReadFile(bfile)
	corrupt := filepath.Join(dir, "corrupt.json")
	os.WriteFile(corrupt, []byte(strings.Replace(string(good), "10.77.0.11", "10.77.0.99", 1)), 0o600)
	beforeSt := d.status(t)
	before := beforeSt.Revision
	out, err := d.cli(t, "backup", "restore", corrupt)
	if err == nil || !strings.Contains(out, "checksum mismatch") || d.status(t).Revision != before {
		t.Fatalf("corrupt restore: err %v out %q", err, out)
	}
	// The daemon refuses it too when handed the bytes directly, and its
	// rings (read back from the kernel) stay as they were.
	raw2, _ := os.ReadFile(corrupt)
	req, _ := http.NewRequest("POST", "http://sluice/v1/restore", strings.NewReader(string(raw2)))
	uc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", d.socket)
	}}}
	resp, err := uc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	after := d.status(t)
	if resp.StatusCode != http.StatusBadRequest || after.Revision != before {
		t.Fatalf("daemon accepted a corrupt snapshot: %s", resp.Status)
	}
	for i := range after.VIPs {
		if after.VIPs[i].RingSHA256 != beforeSt.VIPs[i].RingSHA256 {
			t.Fatalf("a refused snapshot changed the ring of %s", after.VIPs[i].VIP)
		}
	}
	d.mustCLI(t, "backend", "del", vipTCP, "10.77.0.13")
	expect(d.mustCLI(t, "backup", "restore", bfile), "restored snapshot")
	if b := backendState(d.status(t), vipTCP, "10.77.0.13"); b.Addr == "" {
		t.Fatal("restore did not bring back the deleted backend")
	}
	// decap on a host of its own (the client)
	attach := lab.Client.Command(context.Background(), sluiceBin, "decap", "attach", "--iface", lab.Client.Link, "--xdp-mode", "native")
	if out, err := attach.CombinedOutput(); err != nil || !strings.Contains(string(out), "decap attached") {
		t.Fatalf("decap attach: %v %s", err, out)
	}
	detach := lab.Client.Command(context.Background(), sluiceBin, "decap", "detach", "--iface", lab.Client.Link)
	if out, err := detach.CombinedOutput(); err != nil || !strings.Contains(string(out), "decap detached") {
		t.Fatalf("decap detach: %v %s", err, out)
	}

	// Bad input of every argument type: a clear error naming the field, a
	// non-zero exit, and no new revision.
	before = d.status(t).Revision
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"vip", "add", "10.0.0.1/tcp"}, "want ADDR:PORT/PROTO"},
		{[]string{"vip", "add", "10.0.0.1:99999/tcp"}, "port \"99999\""},
		{[]string{"vip", "add", "nope:80/tcp"}, "not an IP address"},
		{[]string{"vip", "add", "10.0.0.1:80/sctp"}, "want tcp or udp"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--forward", "nat"}, "--forward"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--ring-size", "100"}, "--ring-size 100"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--min-active", "0"}, "--min-active 0"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--udp-timeout", "soon"}, "--udp-timeout"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--gue-port", "6080"}, "--gue-port: only with --forward gue"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--forward", "gue", "--gue-port", "0"}, "--gue-port 0"},
		{[]string{"vip", "add", "10.0.0.1:80/tcp", "--forward", "gue", "--gue-port", "70000"}, "--gue-port 70000"},
		{[]string{"vip", "add", vipTCP}, "already exists"},
		{[]string{"vip", "add"}, "want one argument"},
		{[]string{"vip", "del", "10.9.9.9:80/tcp"}, "no such vip"},
		{[]string{"vip", "ring", "10.9.9.9:80/tcp"}, "no such vip"},
		{[]string{"backend", "add", vipTCP, "nope"}, "not an IP address"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--check", "icmp"}, "--check"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--weight", "70000"}, "--weight"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--mac", "zz"}, "--mac"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--interval", "0s"}, "interval"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--rise", "0"}, "rise"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--check-codes", "abc"}, "--check-codes"},
		{[]string{"backend", "add", vipTCP, "10.77.0.50", "--check-port", "70000"}, "--check-port"},
		{[]string{"backend", "add", "10.9.9.9:80/tcp", "10.77.0.50"}, "no such vip"},
		{[]string{"backend", "drain", vipTCP, "10.77.0.99"}, "no such backend"},
		{[]string{"status", "-o", "yaml"}, "want table or json"},
		{[]string{"export", "-o", "xml"}, "want yaml or json"},
		{[]string{"apply", "-f", filepath.Join(dir, "missing.yaml")}, "-f"},
		{[]string{"backup", "restore", filepath.Join(dir, "missing.json")}, "no such file"},
		{[]string{"stats", "--every", "0s"}, "--every"},
		{[]string{"ha", "failover"}, "not part of an LB pair"},
		{[]string{"ha", "status", "-o", "yaml"}, "want table or json"},
	}
	unknown := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknown, []byte("vips:\n- vip: 10.0.0.1:80/tcp\n  colour: blue\n"), 0o600)
	bad = append(bad, struct {
		args []string
		want string
	}{[]string{"apply", "-f", unknown}, "colour"})
	badState := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badState, []byte("vips:\n- vip: 10.0.0.1:80/tcp\n  ring_size: 12\n"), 0o600)
	bad = append(bad, struct {
		args []string
		want string
	}{[]string{"apply", "-f", badState}, "ring_size 12"})
	for _, b := range bad {
		out, err := d.cli(t, b.args...)
		if err == nil {
			t.Errorf("sluice %s: accepted", strings.Join(b.args, " "))
			continue
		}
		if !strings.Contains(out, b.want) {
			t.Errorf("sluice %s: %q does not name %q", strings.Join(b.args, " "), strings.TrimSpace(out), b.want)
		}
	}
	if after := d.status(t).Revision; after != before {
		t.Fatalf("bad input changed the revision %d -> %d", before, after)
	}
	expect(d.mustCLI(t, "ha", "status"), "not part of an LB pair")
	var hs api.HAStatus
	if err := json.Unmarshal([]byte(d.mustCLI(t, "ha", "status", "-o", "json")), &hs); err != nil || hs.Enabled || hs.Role != "single" {
		t.Fatalf("ha status -o json of a lone daemon: %+v %v", hs, err)
	}
	expect(d.mustCLI(t, "vip", "del", vipUDP), "deleted")
}

// TestMetrics scrapes the daemon after an exactly known number of packets.
func TestMetrics(t *testing.T) {
	lab, d := labWithDaemon(t, 3)
	d.mustCLI(t, "vip", "add", vipUDP, "--forward", "dsr")
	for _, b := range lab.Backends {
		d.mustCLI(t, "backend", "add", vipUDP, b.Addr.Addr().String(), "--check", "udp", "--interval", "100ms", "--timeout", "100ms", "--rise", "1")
	}
	d.waitStatus(t, "all up", allUp(3))
	const n = 50
	c, err := lab.Client.Dial(context.Background(), "udp4", "", "10.77.1.100:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for i := range n {
		if _, err := c.Write([]byte("q")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	const frame = 14 + 20 + 8 + 1
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return lab.LB.Dial(ctx, network, "", addr)
	}}}
	get := func(path string) (int, string) {
		resp, err := hc.Get("http://127.0.0.1:9642" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	_, body := get("/metrics")
	series := func(name string, labels ...string) []float64 { return metricSeries(body, name, labels...) }
	metric := func(name string, labels ...string) (float64, bool) {
		vs := series(name, labels...)
		if len(vs) == 0 {
			return 0, false
		}
		return vs[0], true
	}
	sum := func(name string, labels ...string) float64 {
		total := 0.0
		for _, v := range series(name, labels...) {
			total += v
		}
		return total
	}
	vl := `vip="10.77.1.100:53/udp"`
	checks := []struct {
		name string
		got  float64
		want float64
	}{
		{"sluice_vip_packets_total", must(metric("sluice_vip_packets_total", vl)), n},
		{"sluice_vip_bytes_total", must(metric("sluice_vip_bytes_total", vl)), n * frame},
		{"sum sluice_backend_packets_total", sum("sluice_backend_packets_total", vl), n},
		{"sum sluice_backend_bytes_total", sum("sluice_backend_bytes_total", vl), n * frame},
		{"sum sluice_backend_up", sum("sluice_backend_up", vl), 3},
		{"sluice_backend_state up", sum("sluice_backend_state", vl, `state="up"`), 3},
		{"sluice_backend_state down", sum("sluice_backend_state", vl, `state="down"`), 0},
		{"sluice_backend_transitions_total to up", sum("sluice_backend_transitions_total", vl, `to="up"`), 3},
		{"sluice_state_revision", must(metric("sluice_state_revision")), float64(d.status(t).Revision)},
		{"sluice_xdp_packets_total tx_dsr", must(metric("sluice_xdp_packets_total", `outcome="tx_dsr"`)), n},
		{"sluice_conntrack_entries", must(metric("sluice_conntrack_entries")), 1},
		{"sluice_build_info", sum("sluice_build_info"), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	for _, name := range []string{"sluice_backend_last_change_timestamp_seconds", "sluice_health_check_duration_seconds_count",
		"sluice_failover_apply_seconds_count", "sluice_backend_check_failures_total"} {
		if !strings.Contains(body, name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	// The shipped dashboard queries only series the daemon exports.
	dash, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := json.Unmarshal(dash, &parsed); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	names := regexp.MustCompile(`sluice_[a-z_]+`).FindAllString(string(dash), -1)
	if len(names) < 10 {
		t.Fatalf("dashboard references only %d series", len(names))
	}
	for _, n := range names {
		if strings.HasPrefix(n, "sluice_ha_") || strings.HasPrefix(n, "sluice_flow_sync_") {
			continue // an LB pair's series: TestHAStatusText checks them
		}
		if strings.HasPrefix(n, "sluice_cluster_") || n == "sluice_store_up" || n == "sluice_coordinator" {
			continue // a cluster node's series: TestClusterPropagation checks them
		}
		if strings.HasPrefix(n, "sluice_bgp_") || n == "sluice_node_draining" {
			continue // a BGP speaker's series: TestBGPAnnounce checks them
		}
		if !strings.Contains(body, n) {
			t.Errorf("dashboard queries %s, which the daemon does not export", n)
		}
	}
}

func must(v float64, ok bool) float64 {
	if !ok {
		return -1
	}
	return v
}
