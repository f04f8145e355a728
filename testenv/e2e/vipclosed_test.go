package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"golang.org/x/sys/unix"
)

// TestVIPAddressClosed: on the master of a pair, which holds the VIP
// addresses, a service of the host listening on every address (an sshd,
// here port 2222) does not answer on a VIP: the connection from the
// client times out, the packets are counted as drop_vip_closed, and ping
// to the VIP still works. The HA port does not answer there either.
func TestVIPAddressClosed(t *testing.T) {
	lp := newLBPair(t, "100ms", 1, 1)
	l, err := lp.hosts[0].Listen("tcp", "0.0.0.0:2222")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-host\r\n"))
			c.Close()
		}
	}()
	sc := newScraper(lp.hosts[0])
	before := sc.value(t, "sluice_xdp_packets_total", `outcome="drop_vip_closed"`)
	vip := netlab.LabVIP4 // held by the master
	for _, port := range []int{2222, 9643} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := lp.lab.Client.Dial(ctx, "tcp4", "", net.JoinHostPort(vip.String(), fmt.Sprint(port)))
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("a host service answered on VIP %s:%d", vip, port)
		}
	}
	after := sc.value(t, "sluice_xdp_packets_total", `outcome="drop_vip_closed"`)
	if after-before < 2 {
		t.Fatalf("drop_vip_closed moved by %v, want at least one SYN per port", after-before)
	}
	// The host's service still answers on the node's own address.
	c, err := lp.lab.Client.Dial(context.Background(), "tcp4", "", net.JoinHostPort(lp.hosts[0].Addr.Addr().String(), "2222"))
	if err != nil {
		t.Fatalf("the host's service on its own address: %v", err)
	}
	c.Close()
	if err := pingOnce(lp.lab.Client, vip); err != nil {
		t.Fatalf("ping %s: %v", vip, err)
	}
	t.Logf("drop_vip_closed %v -> %v; ping answered", before, after)
}

// pingOnce sends one ICMP echo request from h to dst and waits for the
// reply.
func pingOnce(h *netlab.Host, dst netip.Addr) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
		req := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 0x51, Seq: 1}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, req, gopacket.Payload("sluice")); err != nil {
			return err
		}
		if err := unix.Sendto(fd, buf.Bytes(), 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return err
		}
		reply := make([]byte, 1500)
		for {
			n, _, err := unix.Recvfrom(fd, reply, 0)
			if err != nil {
				return fmt.Errorf("no echo reply: %w", err)
			}
			// A raw ICMP socket reads the IPv4 header too: bounded by
			// its length field before the ICMP header is read.
			hl := int(reply[0]&0x0f) * 4
			if n >= hl+8 && reply[hl] == byte(layers.ICMPv4TypeEchoReply) {
				return nil
			}
		}
	})
}
