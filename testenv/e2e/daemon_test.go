package e2e

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/control/api"
)

// TestDaemonFlags: bad --ha-* and cluster flags, and an interface sluice
// cannot use, are refused, naming the flag, before anything is loaded.
func TestDaemonFlags(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "ha.key")
	short := filepath.Join(dir, "short.key")
	os.WriteFile(key, []byte("a shared secret of the lab pair\n"), 0o600)
	os.WriteFile(short, []byte("tiny\n"), 0o600)
	// An interface that does not exist: a check that came too late would
	// fail on it rather than attach anything.
	base := []string{"daemon", "--iface", "sluicet-none", "--state-dir", dir, "--socket", filepath.Join(dir, "s.sock"), "--metrics-addr", ""}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ha-peer", "10.0.0.3"}, "--ha-key-file: required"},
		{[]string{"--ha-peer", "nope", "--ha-key-file", key}, `--ha-peer "nope"`},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", key, "--ha-priority", "0"}, "--ha-priority 0"},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", key, "--ha-priority", "256"}, "--ha-priority 256"},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", key, "--ha-advert", "1ms"}, "--ha-advert 1ms"},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", short}, "--ha-key-file"},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", filepath.Join(dir, "missing")}, "--ha-key-file"},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", key, "--ha-port", "70000"}, "--ha-port 70000"},
		{[]string{"--ha-peer", "10.0.0.3", "--ha-key-file", key, "--ha-name", strings.Repeat("n", 41)}, "--ha-name"},
		{[]string{"--ha-key-file", key}, "--ha-key-file: needs --ha-peer"},
		{[]string{"--iface", "lo"}, "--iface lo: not an Ethernet interface"},
		{[]string{"--store", "zk"}, `--store "zk": want bolt or etcd`},
		{[]string{"--cluster", "c1"}, "--cluster: needs --store etcd"},
		{[]string{"--store", "etcd", "--cluster", "c1", "--node-name", "n1"}, "--etcd-endpoints: required"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1"}, `--etcd-endpoints "10.0.0.31:2379"`},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--node-name", "n1"}, "--cluster: required"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "a/b", "--node-name", "n1"}, `--cluster "a/b"`},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1"}, "--node-name: required"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "lb/1"}, `--node-name "lb/1": 1 to 64 letters`},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1", "--health-quorum", "most"}, `--health-quorum "most"`},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1", "--cluster-ttl", "0"}, "--cluster-ttl 0"},
		{[]string{"--flow-sync-key", "/etc/hostname"}, "--flow-sync-key: needs --store etcd"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1", "--flow-sync-port", "9700"}, "--flow-sync-port: needs --flow-sync-key"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1", "--flow-sync-key", "/nonexistent/flow.key"}, "--flow-sync-key: open /nonexistent/flow.key"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1", "--etcd-ca", filepath.Join(dir, "missing")}, "--etcd-ca"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "http://10.0.0.31:2379", "--cluster", "c1", "--node-name", "n1", "--ha-peer", "10.0.0.3", "--ha-key-file", key}, "an LB pair and a cluster"},
		{[]string{"--bgp-asn", "65001"}, "--bgp-peer: at least one"},
		{[]string{"--bgp-peer", "10.0.0.254@65000"}, "--bgp-asn: required"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254"}, `--bgp-peer "10.0.0.254": want ADDR[:PORT]@ASN`},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "router@65000"}, `--bgp-peer "router@65000"`},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-peer", "10.0.0.254:1179@65000"}, "--bgp-peer 10.0.0.254: given twice"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-hold", "1s"}, "--bgp-hold 1s"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-bfd-interval", "1ms"}, "--bgp-bfd-interval 1ms"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-bfd-multiplier", "1"}, "--bgp-bfd-multiplier 1"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-community", "70000:1"}, `--bgp-community "70000:1"`},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-router-id", "fd00::1"}, "--bgp-router-id fd00::1"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-next-hop", "x"}, `--bgp-next-hop "x"`},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-next-hop6", "10.0.0.2"}, "--bgp-next-hop6 10.0.0.2: must be a global or unique-local IPv6 address"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--bgp-next-hop6", "fe80::1"}, "--bgp-next-hop6 fe80::1"},
		{[]string{"--bgp-next-hop6", "fd77::2"}, "--bgp-next-hop6: needs --bgp-asn and --bgp-peer"},
		{[]string{"--bgp-bfd"}, "--bgp-bfd: needs --bgp-asn and --bgp-peer"},
		{[]string{"--bgp-asn", "65001", "--bgp-peer", "10.0.0.254@65000", "--ha-peer", "10.0.0.3", "--ha-key-file", key}, "an LB pair and BGP announcements"},
	} {
		out, err := exec.Command(sluiceBin, append(slices.Clone(base), c.args...)...).CombinedOutput()
		if err == nil {
			t.Errorf("sluice daemon %v: accepted", c.args)
			continue
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("sluice daemon %v: %q does not name %q", c.args, strings.TrimSpace(string(out)), c.want)
		}
	}
}

// TestHAStatusText: `sluice ha status` as people read it, on both nodes.
func TestHAStatusText(t *testing.T) {
	lp := newLBPair(t, "100ms", 1, 1)
	for i, want := range []string{"role master", "role backup"} {
		out := lp.nodes[i].mustCLI(t, "ha", "status")
		for _, s := range []string{want, "priority", "advert 100ms", "master-down", "revision", "PEER", "ADVERT AGE", lp.hosts[1-i].Addr.Addr().String()} {
			if !strings.Contains(out, s) {
				t.Errorf("node %d: ha status lacks %q:\n%s", i, s, out)
			}
		}
	}
	// The shipped dashboard's LB-pair panels query series a pair exports.
	dash, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := newScraper(lp.hosts[0]).hc.Get("http://127.0.0.1:9642/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	n := 0
	for _, name := range regexp.MustCompile(`sluice_(ha|flow_sync)_[a-z_]+`).FindAllString(string(dash), -1) {
		n++
		if !strings.Contains(string(body), name) {
			t.Errorf("dashboard queries %s, which a pair node does not export", name)
		}
	}
	if n < 8 {
		t.Fatalf("dashboard has %d LB-pair series", n)
	}
	out := lp.nodes[0].mustCLI(t, "ha", "failover", "-o", "json")
	var st api.HAStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Role != "backup" {
		t.Fatalf("ha failover -o json: %+v %v", st, err)
	}
	waitRole(t, lp.nodes[1], "master")
	if out, err := lp.nodes[0].cli(t, "ha", "failover"); err == nil || !strings.Contains(out, "not the master") {
		t.Fatalf("ha failover on the backup: %v %s", err, out)
	}
	if out, err := lp.nodes[0].cli(t, "vip", "del", vipTCP); err == nil || !strings.Contains(out, "backup of an LB pair") {
		t.Fatalf("a change on the backup: %v %s", err, out)
	}
}
