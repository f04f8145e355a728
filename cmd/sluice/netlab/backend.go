package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/loader/decap"
)

// Backend is a host that serves the VIPs: the VIPs sit on its loopback, the
// decap program strips IPIP, and GUE to loader.DefaultGUEPort, addressed
// to it, and TCP and UDP servers reply
// with its name.
type Backend struct {
	*Host
	Decap *decap.Decap

	mu        sync.Mutex
	listeners []net.Listener
	packets   []net.PacketConn
	conns     map[net.Conn]struct{}
	tcpPorts  []uint16
	httpPorts []uint16
	udpPorts  []uint16
	udpAddrs  []netip.Addr
	wg        sync.WaitGroup
}

// BackendOptions describe a backend.
type BackendOptions struct {
	VIPs      []netip.Addr
	TCPPorts  []uint16 // greeting (the backend's name) then echo
	HTTPPorts []uint16 // HTTP: every path answers the backend's name
	UDPPorts  []uint16 // every datagram answered with the backend's name
	Host      HostOptions
}

// AddBackend creates a backend host with its servers running.
func (e *Env) AddBackend(ctx context.Context, name string, addr netip.Prefix, opts BackendOptions) (*Backend, error) {
	h, err := e.AddHost(name, addr, opts.Host)
	if err != nil {
		return nil, err
	}
	b := &Backend{Host: h, conns: map[net.Conn]struct{}{}, tcpPorts: opts.TCPPorts, httpPorts: opts.HTTPPorts, udpPorts: opts.UDPPorts,
		// UDP servers bind each address, so replies leave from the address
		// the query was sent to (the VIP), as clients expect.
		udpAddrs: append([]netip.Addr{addr.Addr()}, opts.VIPs...)}
	e.OnClose(func() error { b.StopServers(true); return b.closeDecap() })
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.arp_ignore", "1"}, {"net.ipv4.conf.all.arp_announce", "2"},
		{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf." + h.Link + ".rp_filter", "0"},
	} {
		if err := h.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	for _, v := range opts.VIPs {
		if err := b.SetVIPOnLoopback(v, true); err != nil {
			return nil, err
		}
	}
	if err := b.AttachDecap(ctx); err != nil {
		return nil, err
	}
	if err := b.StartServers(); err != nil {
		return nil, err
	}
	return b, nil
}

// AttachDecap attaches the decap program for the backend's addresses
// and GUE on loader.DefaultGUEPort (AddBackend does).
func (b *Backend) AttachDecap(ctx context.Context) error {
	addrs := []netip.Addr{b.Addr.Addr()}
	if b.Addr6.IsValid() {
		addrs = append(addrs, b.Addr6.Addr())
	}
	err := b.Do(func() error {
		var err error
		b.Decap, err = decap.Attach(ctx, decap.Options{Iface: b.Link, Mode: loader.ModeNative,
			PinRoot: b.env.PinRoot(), Addrs: addrs, GUEPorts: []uint16{loader.DefaultGUEPort}, Logger: b.env.log})
		return err
	})
	if err != nil {
		return fmt.Errorf("attach decap on %s: %w", b.Name, err)
	}
	return nil
}

// DetachDecap removes the decap program (fault injection: a backend
// without a decapsulator).
func (b *Backend) DetachDecap() error {
	if err := b.closeDecap(); err != nil {
		return err
	}
	b.Decap = nil
	if err := b.Do(func() error { return decap.Detach(b.Link, b.env.PinRoot()) }); err != nil {
		return fmt.Errorf("detach decap on %s: %w", b.Name, err)
	}
	return nil
}

// SetVIPOnLoopback puts VIP v on the backend's loopback, or takes it off
// (fault injection: a backend that lost its VIP configuration still
// answers on its own address).
func (b *Backend) SetVIPOnLoopback(v netip.Addr, on bool) error {
	return b.Netlink(func(nl *netlink.Handle) error {
		lo, err := nl.LinkByName("lo")
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(v, v.BitLen()))}
		if v.Is6() {
			a.Flags = unix.IFA_F_NODAD // usable at once, not tentative
		}
		if on {
			err = nl.AddrAdd(lo, a)
		} else {
			err = nl.AddrDel(lo, a)
		}
		if err != nil {
			return fmt.Errorf("vip %s on lo of %s (%v): %w", v, b.Name, on, err)
		}
		return nil
	})
}

func (b *Backend) closeDecap() error {
	if b.Decap == nil {
		return nil
	}
	return b.Decap.Close()
}

// StartServers (re)starts the TCP and UDP servers on every address.
func (b *Backend) StartServers() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.listeners) > 0 || len(b.packets) > 0 {
		return nil
	}
	for _, p := range b.tcpPorts {
		l, err := b.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(int(p))))
		if err != nil {
			return fmt.Errorf("listen tcp/%d on %s: %w", p, b.Name, err)
		}
		b.listeners = append(b.listeners, l)
		b.wg.Add(1)
		go b.serveTCP(l)
	}
	for _, p := range b.httpPorts {
		l, err := b.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(int(p))))
		if err != nil {
			return fmt.Errorf("listen http/%d on %s: %w", p, b.Name, err)
		}
		b.listeners = append(b.listeners, l)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, b.Name+"\n")
		}), ReadHeaderTimeout: 5 * time.Second}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			_ = srv.Serve(l)
		}()
	}
	for _, p := range b.udpPorts {
		for _, a := range b.udpAddrs {
			c, err := b.ListenPacket("udp", netip.AddrPortFrom(a, p).String())
			if err != nil {
				return fmt.Errorf("listen udp %s:%d on %s: %w", a, p, b.Name, err)
			}
			b.packets = append(b.packets, c)
			b.wg.Add(1)
			go b.serveUDP(c)
		}
	}
	return nil
}

// StopServers closes the listeners, so new connections are refused; with
// reset it also closes every open connection.
func (b *Backend) StopServers(reset bool) {
	b.mu.Lock()
	for _, l := range b.listeners {
		l.Close()
	}
	for _, c := range b.packets {
		c.Close()
	}
	b.listeners, b.packets = nil, nil
	if reset {
		for c := range b.conns {
			c.Close()
		}
	}
	b.mu.Unlock()
	if reset {
		b.wg.Wait()
	}
}

// serveTCP greets each connection with the backend's name, then echoes.
func (b *Backend) serveTCP(l net.Listener) {
	defer b.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
			if _, err := io.WriteString(c, b.Name+"\n"); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		}()
	}
}

func (b *Backend) serveUDP(c net.PacketConn) {
	defer b.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteTo([]byte(b.Name+"\n"), from)
	}
}

// Greeting reads the backend name a server sends on a new connection.
func Greeting(c net.Conn) (string, error) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	if len(line) < 2 {
		return "", errors.New("empty greeting")
	}
	return line[:len(line)-1], nil
}
