package e2e

import (
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestAlertRules: dist/alerts.yml passes promtool's checks and its own
// unit tests (dist/alerts_test.yml), and every sluice_ series it uses is
// exported by a node of an LB pair serving a maglev and a failover VIP,
// with the values the rules read.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is missing (apt-get install prometheus)")
		}
		t.Skip("promtool is missing (apt-get install prometheus)")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../dist"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	testutil.Require(t)
	lp := newLBPair(t, "100ms", 1, 1)
	m := lp.nodes[0]
	m.mustCLI(t, "vip", "add", "10.77.1.100:5432/tcp", "--policy", "failover")
	m.mustCLI(t, append([]string{"backend", "add", "10.77.1.100:5432/tcp", lp.lab.Backends[0].Addr.Addr().String(), "--check-port", "7"}, fastCheck...)...)
	m.waitStatus(t, "failover VIP has a primary", func(st api.Status) bool {
		for _, v := range st.VIPs {
			if v.VIP == "10.77.1.100:5432/tcp" {
				return v.Primary != ""
			}
		}
		return false
	})
	resp, err := newScraper(lp.hosts[0]).hc.Get("http://127.0.0.1:9642/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(raw)
	rules, err := os.ReadFile("../../dist/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`sluice_[a-z_]+`).FindAllString(string(rules), -1)
	if len(names) < 9 {
		t.Fatalf("the rules use only %d series", len(names))
	}
	for _, n := range names {
		if len(metricSeries(body, n)) == 0 && !strings.Contains(body, n) {
			t.Errorf("alerts.yml uses %s, which a pair node does not export", n)
		}
	}
	for _, c := range []struct {
		name, label string
		want        float64
	}{
		{"sluice_vip_usable_backends", `vip="` + vipTCP + `"`, 1},
		{"sluice_vip_min_active", `vip="` + vipTCP + `"`, 1},
		{"sluice_vip_usable_backends", `vip="10.77.1.100:5432/tcp"`, 1},
		{"sluice_vip_has_primary", `vip="10.77.1.100:5432/tcp"`, 1},
		{"sluice_ha_dual_master", "", 0},
	} {
		labels := []string{}
		if c.label != "" {
			labels = append(labels, c.label)
		}
		if vs := metricSeries(body, c.name, labels...); len(vs) != 1 || vs[0] != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.label, vs, c.want)
		}
	}
}
