package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// FRRDir is where Debian's frr package keeps its daemons.
const FRRDir = "/usr/lib/frr"

// FRR is a real FRRouting instance (Debian's frr): zebra, bfdd and bgpd
// run in the foreground on one integrated config, with their sockets,
// pid files and logs in their own directory.
type FRR struct {
	Dir   string
	procs []*exec.Cmd
	done  []chan error
	stop  sync.Once
}

// StartFRR writes conf to a new directory and starts zebra, bfdd and
// bgpd on it in host's namespace, as Debian's frr user (FRR refuses to
// run as a user outside its vty group). It waits until bgpd answers on
// its vty socket. Stop it with Stop, which also removes the directory.
func StartFRR(ctx context.Context, host *netlab.Host, conf string) (*FRR, error) {
	if _, err := os.Stat(filepath.Join(FRRDir, "bgpd")); err != nil {
		return nil, errors.New("FRR is missing: apt-get install frr")
	}
	u, err := user.Lookup("frr")
	if err != nil {
		return nil, fmt.Errorf("FRR's user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// Under the system's temporary directory, not a test's: frr must
	// reach it, and a test's directory is root's alone.
	d, err := os.MkdirTemp("", "sluicet-frr-")
	if err != nil {
		return nil, err
	}
	f := &FRR{Dir: d}
	cf := filepath.Join(d, "frr.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		os.RemoveAll(d)
		return nil, err
	}
	for _, p := range []string{d, cf} {
		if err := os.Chown(p, uid, gid); err != nil {
			os.RemoveAll(d)
			return nil, err
		}
	}
	zserv := filepath.Join(d, "zserv.api")
	for _, daemon := range []string{"zebra", "bfdd", "bgpd"} {
		args := []string{"-f", cf, "-i", filepath.Join(d, daemon+".pid"), "--vty_socket", d, "-z", zserv,
			"-u", "frr", "-g", "frr", "-P", "0", "--log", "file:" + filepath.Join(d, daemon+".log")}
		if daemon == "bfdd" {
			args = append(args, "--bfdctl", filepath.Join(d, "bfdd.sock"))
		}
		if err := f.start(host, daemon, args); err != nil {
			f.Stop()
			return nil, err
		}
		if daemon == "zebra" {
			if err := waitFile(ctx, zserv, 10*time.Second); err != nil {
				f.Stop()
				return nil, fmt.Errorf("zebra: %w: %s", err, f.Log())
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := f.Show(ctx, "bgp summary"); err == nil {
			return f, nil
		}
		if time.Now().After(deadline) {
			f.Stop()
			return nil, fmt.Errorf("bgpd did not answer in 10s: %s", f.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *FRR) start(host *netlab.Host, daemon string, args []string) error {
	cmd := host.Command(context.Background(), filepath.Join(FRRDir, daemon), args...)
	out, err := os.Create(filepath.Join(f.Dir, daemon+".out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start %s: %w", daemon, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); out.Close() }()
	f.procs = append(f.procs, cmd)
	f.done = append(f.done, done)
	return nil
}

// waitFile waits until path exists.
func waitFile(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear in %v", path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Show runs `vtysh -c "show ARGS"` against this instance.
func (f *FRR) Show(ctx context.Context, args string) (string, error) {
	out, err := exec.CommandContext(ctx, "vtysh", "--vty_socket", f.Dir, "-c", "show "+args).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vtysh show %s: %w: %s", args, err, out)
	}
	return string(out), nil
}

// Log is what the daemons logged.
func (f *FRR) Log() string {
	var b strings.Builder
	for _, daemon := range []string{"zebra", "bfdd", "bgpd"} {
		for _, ext := range []string{".out", ".log"} {
			raw, _ := os.ReadFile(filepath.Join(f.Dir, daemon+ext))
			if len(raw) > 0 {
				fmt.Fprintf(&b, "--- %s%s\n%s", daemon, ext, raw)
			}
		}
	}
	return b.String()
}

// Stop kills the daemons, waits for them and removes their directory.
func (f *FRR) Stop() {
	f.stop.Do(func() {
		for i, cmd := range f.procs {
			cmd.Process.Kill()
			<-f.done[i]
		}
		os.RemoveAll(f.Dir)
	})
}

// LabFRRConfig is the FRR config of a lab's router, the same policy as
// LabBIRDConfig: one passive eBGP session (AS 65000) per LB node (AS
// 65001) in a peer group, hold time 3 s, BFD at 100 ms × 3 when bfd,
// only host routes of the VIP networks accepted (/32s, and /128s over
// the same sessions), nothing sent to the LB, and ECMP over up to 16
// nodes.
func LabFRRConfig(l *netlab.Lab, bfd bool) string {
	var c strings.Builder
	fmt.Fprintf(&c, "frr defaults datacenter\n!\nip prefix-list SLUICE-VIPS seq 10 permit %s ge 32 le 32\n", netlab.LabVIPNet4)
	fmt.Fprintf(&c, "ipv6 prefix-list SLUICE-VIPS6 seq 10 permit %s ge 128 le 128\n!\n", netlab.LabVIPNet6)
	c.WriteString("route-map FROM-LB permit 10\n match ip address prefix-list SLUICE-VIPS\n!\n")
	c.WriteString("route-map FROM-LB6 permit 10\n match ipv6 address prefix-list SLUICE-VIPS6\n!\n")
	c.WriteString("route-map TO-LB deny 10\n!\n") // the LB needs no route: send it none
	fmt.Fprintf(&c, "router bgp 65000\n bgp router-id %s\n no bgp ebgp-requires-policy\n bgp bestpath as-path multipath-relax\n", netlab.LabRouter4.Addr())
	c.WriteString(" neighbor LB peer-group\n neighbor LB remote-as 65001\n neighbor LB timers 1 3\n neighbor LB timers connect 1\n neighbor LB passive\n")
	if bfd {
		c.WriteString(" neighbor LB bfd profile lb\n")
	}
	for _, n := range l.Nodes {
		fmt.Fprintf(&c, " neighbor %s peer-group LB\n", n.Addr.Addr())
	}
	c.WriteString(" !\n address-family ipv4 unicast\n  neighbor LB route-map FROM-LB in\n  neighbor LB route-map TO-LB out\n  maximum-paths 16\n exit-address-family\n")
	c.WriteString(" !\n address-family ipv6 unicast\n  neighbor LB activate\n  neighbor LB route-map FROM-LB6 in\n  neighbor LB route-map TO-LB out\n  maximum-paths 16\n exit-address-family\n!\n")
	if bfd {
		c.WriteString("bfd\n profile lb\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n")
	}
	return c.String()
}

// Summary is bgpd's view of its sessions (`show bgp summary`).
func (f *FRR) Summary(ctx context.Context) (string, error) { return f.Show(ctx, "bgp summary") }
