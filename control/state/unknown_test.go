package state

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestKeepUnknown: only fields this version does not know are kept from
// the old value; a known field the new value leaves out (an omitempty
// one turned off) is not brought back; backends are matched by address.
func TestKeepUnknown(t *testing.T) {
	prev := `{"vip":"10.0.0.1:80/tcp","future":{"x":1},"backends":[` +
		`{"addr":"10.0.0.2","drain":true,"nat_port":8080,"agent":{"port":1,"interval":"1s","tls":true}},` +
		`{"addr":"10.0.0.3","nat_port":9090}]}`
	v, err := DecodeVIP([]byte(prev))
	if err != nil {
		t.Fatal(err)
	}
	v.Backends[0].Drain = false                                    // undrained
	v.Backends = append(v.Backends[:1], Backend{Addr: "10.0.0.4"}) // 10.0.0.3 removed, 10.0.0.4 added
	next, _ := json.Marshal(v)
	out, err := KeepUnknown([]byte(prev), next)
	if err != nil {
		t.Fatal(err)
	}
	got := string(out)
	for _, want := range []string{`"future":{"x":1}`, `"nat_port":8080`, `"tls":true`, `"addr":"10.0.0.4"`} {
		if !strings.Contains(got, want) {
			t.Errorf("%s missing from %s", want, got)
		}
	}
	for _, gone := range []string{`"drain":true`, `9090`, `10.0.0.3`} {
		if strings.Contains(got, gone) {
			t.Errorf("%s came back in %s", gone, got)
		}
	}
	if again, _ := DecodeVIP(out); again.Backends[0].Drain || len(again.Backends) != 2 {
		t.Errorf("decoded back: %+v", again)
	}
	plain := `{"vip":"10.0.0.1:80/tcp"}`
	if out, _ := KeepUnknown([]byte(plain), []byte(plain)); string(out) != plain {
		t.Errorf("nothing to keep, yet rewritten: %s", out)
	}
	if out, _ := KeepUnknown([]byte("not json"), []byte(plain)); string(out) != plain {
		t.Errorf("an unreadable old value changed the new one: %s", out)
	}
}
