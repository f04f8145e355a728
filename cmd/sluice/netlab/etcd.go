package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdCluster is a real etcd cluster (Debian's etcd-server), one member
// per namespace on the lab's bridge.
type EtcdCluster struct {
	Members []*EtcdMember
	// TLS, for a cluster started with StartEtcdTLS: clients must present
	// a certificate its CA signed.
	TLS *EtcdTLS
	dir string
}

// EtcdMember is one etcd process in a host of its own.
type EtcdMember struct {
	*Host
	Name    string
	scheme  string // http or https
	dataDir string
	args    []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// EtcdBinary is the etcd server the lab runs.
const EtcdBinary = "etcd"

// countHosts counts the hosts whose name starts with prefix.
func (e *Env) countHosts(prefix string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, h := range e.hosts {
		if strings.HasPrefix(h.Name, prefix) {
			n++
		}
	}
	return n
}

// StartEtcd starts an n-member cluster on hosts etcd1…etcdN (a second
// cluster in the same environment: etcdN+1…) with the
// addresses first, first+1, …, and waits until it elects a leader. Its
// processes and data go with the environment.
func (e *Env) StartEtcd(ctx context.Context, n int, first netip.Addr, bits int) (*EtcdCluster, error) {
	return e.startEtcd(ctx, n, first, bits, false)
}

// StartEtcdTLS is StartEtcd with TLS for clients and peers, and client
// certificates required (a CA made for it; the files in TLS).
func (e *Env) StartEtcdTLS(ctx context.Context, n int, first netip.Addr, bits int) (*EtcdCluster, error) {
	return e.startEtcd(ctx, n, first, bits, true)
}

func (e *Env) startEtcd(ctx context.Context, n int, first netip.Addr, bits int, secure bool) (*EtcdCluster, error) {
	if _, err := exec.LookPath(EtcdBinary); err != nil {
		return nil, fmt.Errorf("etcd is missing: apt-get install etcd-server")
	}
	dir, err := os.MkdirTemp("", e.prefix+"-etcd-")
	if err != nil {
		return nil, err
	}
	c := &EtcdCluster{dir: dir}
	e.OnClose(c.close)
	scheme := "http"
	if secure {
		var ips []netip.Addr
		for a, i := first, 0; i < n; a, i = a.Next(), i+1 {
			ips = append(ips, a)
		}
		if c.TLS, err = writeEtcdTLS(dir, ips); err != nil {
			return nil, fmt.Errorf("etcd certificates: %w", err)
		}
		scheme = "https"
	}
	var initial []string
	addr := first
	base := e.countHosts("etcd") // a second cluster's hosts go on from there
	for i := range n {
		name := fmt.Sprintf("etcd%d", base+i+1)
		h, err := e.AddHost(name, netip.PrefixFrom(addr, bits), HostOptions{})
		if err != nil {
			return nil, err
		}
		c.Members = append(c.Members, &EtcdMember{Host: h, Name: name, scheme: scheme, dataDir: filepath.Join(dir, name),
			logPath: filepath.Join(dir, name+".log")})
		initial = append(initial, fmt.Sprintf("%s=%s://%s", name, scheme, netip.AddrPortFrom(addr, 2380)))
		addr = addr.Next()
	}
	for _, m := range c.Members {
		a := m.Addr.Addr()
		peer, client := scheme+"://"+netip.AddrPortFrom(a, 2380).String(), scheme+"://"+netip.AddrPortFrom(a, 2379).String()
		m.args = []string{"--name", m.Name, "--data-dir", m.dataDir,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", fmt.Sprintf("%s-%s-%d", e.prefix, e.id, base),
			"--heartbeat-interval", "50", "--election-timeout", "500"}
		if f := c.TLS; f != nil {
			m.args = append(m.args, "--cert-file", f.ServerCert, "--key-file", f.ServerKey, "--client-cert-auth", "--trusted-ca-file", f.CA,
				"--peer-cert-file", f.ServerCert, "--peer-key-file", f.ServerKey, "--peer-client-cert-auth", "--peer-trusted-ca-file", f.CA)
		}
		if err := m.Start(); err != nil {
			return nil, err
		}
	}
	return c, c.WaitHealthy(ctx)
}

// Endpoints are the members' client URLs.
func (c *EtcdCluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.Endpoint())
	}
	return out
}

// Endpoint is the member's client URL.
func (m *EtcdMember) Endpoint() string {
	return m.scheme + "://" + netip.AddrPortFrom(m.Addr.Addr(), 2379).String()
}

// Client opens a client of the cluster, dialling from h's namespace.
func (c *EtcdCluster) Client(h *Host) (*clientv3.Client, error) {
	return c.client(h, c.Endpoints())
}

func (c *EtcdCluster) client(h *Host, endpoints []string) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, DialOptions: h.GRPCDialer(), Logger: zap.NewNop()}
	if c.TLS != nil {
		var err error
		if cfg.TLS, err = c.TLS.ClientConfig(); err != nil {
			return nil, err
		}
	}
	return clientv3.New(cfg)
}

// WaitHealthy waits until a linearizable read succeeds through every
// running member.
func (c *EtcdCluster) WaitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		cl, err := c.client(m.Host, []string{m.Endpoint()})
		if err != nil {
			return fmt.Errorf("etcd client of %s: %w", m.Name, err)
		}
		for {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			_, err = cl.Get(rctx, "health")
			rcancel()
			if err == nil || ctx.Err() != nil {
				break
			}
		}
		cl.Close()
		if err != nil {
			return fmt.Errorf("etcd member %s not healthy: %w; its log ends:\n%s", m.Name, err, m.logTail())
		}
	}
	return nil
}

// Start runs the member's etcd (again, on its data directory).
func (m *EtcdMember) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("etcd %s is running", m.Name)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := m.Command(context.Background(), EtcdBinary, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd %s: %w", m.Name, err)
	}
	m.cmd, m.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		logf.Close()
		close(done)
	}(m.done)
	return nil
}

// Kill stops the member with sig (SIGKILL, SIGTERM) and waits for it.
func (m *EtcdMember) Kill(sig syscall.Signal) error {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal etcd %s: %w", m.Name, err)
	}
	<-done
	return nil
}

// Running says whether the member's process runs.
func (m *EtcdMember) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// PID is the member's process id (0 while it is stopped).
func (m *EtcdMember) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

func (c *EtcdCluster) close() error {
	var errs []error
	for _, m := range c.Members {
		errs = append(errs, m.Kill(syscall.SIGKILL))
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}

// GRPCDialer makes a gRPC client dial from h's namespace.
func (h *Host) GRPCDialer() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return h.Dial(ctx, "tcp", "", addr)
	})}
}

// logTail is the end of the member's log, for errors.
func (m *EtcdMember) logTail() string {
	b, _ := os.ReadFile(m.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
