package tcprobe

import "testing"

// TestMark: a mark holds the backend index under sluice's tag, and only
// backend indices are marks.
func TestMark(t *testing.T) {
	m, err := Mark(4095)
	if err != nil || m != 0x51ce0fff {
		t.Fatalf("Mark(4095) = %#x, %v; want 0x51ce0fff", m, err)
	}
	if idx, ok := Backend(m); !ok || idx != 4095 {
		t.Fatalf("Backend(%#x) = %d, %v", m, idx, ok)
	}
	if _, ok := Backend(0x12340001); ok {
		t.Fatal("another tag read as a probe mark")
	}
	for _, idx := range []uint32{0, 1 << 16} {
		if _, err := Mark(idx); err == nil {
			t.Errorf("Mark(%d) = nil error", idx)
		}
	}
}
