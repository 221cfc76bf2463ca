package shmpool

// The connection layer: a SOCK_SEQPACKET socket as a raw, blocking file
// descriptor. A blocking send and receive cost two system calls per round
// trip and nothing else; Go's netpoller (net.UnixConn) would add an epoll
// wait and a goroutine wake-up to every reply (bench_test.go measures
// both). Timeouts are the kernel's (SO_RCVTIMEO), and a blocked receive is
// interrupted by shutdown(2) from Client.Close.

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// expectedServerUID is the uid a server must run as: ours. Tests replace it
// to see the refusal.
var expectedServerUID = os.Getuid

// dialSocket connects a SOCK_SEQPACKET socket to path, retrying while
// connect fails with EAGAIN (the server's listen backlog is full) until
// deadline, then checks with SO_PEERCRED that the server runs as this
// process's uid. The descriptor it returns is blocking and close-on-exec.
func dialSocket(path string, deadline time.Time) (int, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("shmpool: connecting to %s: socket: %w", path, err)
	}
	addr := &syscall.SockaddrUnix{Name: path}
	backoff := 200 * time.Microsecond
	for {
		err = syscall.Connect(fd, addr)
		if err == nil {
			break
		}
		if err == syscall.EINTR {
			continue
		}
		if err != syscall.EAGAIN {
			syscall.Close(fd)
			return -1, fmt.Errorf("shmpool: connecting to %s: %w", path, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			syscall.Close(fd)
			return -1, fmt.Errorf("shmpool: connecting to %s: %w (the server's listen backlog stayed full until the dial timeout)", path, err)
		}
		time.Sleep(min(backoff, left))
		backoff = min(2*backoff, 50*time.Millisecond)
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("shmpool: connecting to %s: %w", path, err)
	}
	cred, err := syscall.GetsockoptUcred(fd, syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	if err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("shmpool: connecting to %s: SO_PEERCRED: %w", path, err)
	}
	if want := expectedServerUID(); int(cred.Uid) != want {
		syscall.Close(fd)
		return -1, fmt.Errorf("shmpool: server at %s runs as uid %d, not %d; refusing", path, cred.Uid, want)
	}
	return fd, nil
}

// setSocketTimeout sets SO_RCVTIMEO (and SO_SNDTIMEO) of fd; 0 means none.
func setSocketTimeout(fd int, opt int, d time.Duration) error {
	if d < 0 {
		d = 0
	}
	if d > 0 && d < time.Microsecond {
		d = time.Microsecond // 0 would mean "wait forever"
	}
	tv := syscall.NsecToTimeval(d.Nanoseconds())
	return syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, opt, &tv)
}

// sendPacket sends b as one packet. MSG_NOSIGNAL: a peer that is gone is
// EPIPE, not SIGPIPE.
func sendPacket(fd int, b []byte) error {
	for {
		n, _, e := syscall.Syscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])),
			uintptr(len(b)), syscall.MSG_NOSIGNAL, 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return e
		case int(n) != len(b):
			return fmt.Errorf("sent %d bytes of a %d-byte packet", n, len(b))
		}
		return nil
	}
}

// recvPacket receives one packet into b and returns its full length, which
// exceeds len(b) when the packet was truncated (MSG_TRUNC). 0 is
// end-of-file. flags may add MSG_DONTWAIT.
func recvPacket(fd int, b []byte, flags int) (int, error) {
	for {
		n, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])),
			uintptr(len(b)), uintptr(syscall.MSG_TRUNC|flags), 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// peerGone reports whether a send failed because the other end is gone:
// the worker died or the server stopped, and nothing ran.
func peerGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNREFUSED)
}
