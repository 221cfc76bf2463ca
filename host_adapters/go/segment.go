package shmpool

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"unsafe"
)

// shmDir is where POSIX shared-memory objects live on Linux.
const shmDir = "/dev/shm/"

// The owner of this process's segments (LAYOUT.md 1.4). The process holds a
// shared flock on /dev/shm/shmpool-<owner>-owner for as long as any segment
// it created still has its name; a reaper can then tell a live owner (the
// lock is held) from a dead one (the kernel dropped the lock). The owner is
// taken before the first segment and let go, the owner file unlinked, once
// the last one is unlinked; a later segment takes a new owner with a new
// random part, so a reaper that raced with the release can never remove a
// segment of the new one.
var owner struct {
	mu   sync.Mutex
	id   string // "<pid>-<8 hex>", or "" when none is held
	fd   int    // the locked owner file
	segs int    // segments created under id and not yet unlinked
}

// ownerLockPath returns /dev/shm/shmpool-<id>-owner.
func ownerLockPath(id string) string {
	return shmDir + namePrefix + id + "-" + ownerLockSuffix
}

// acquireOwner returns the current owner id, taking one first if none is
// held, and counts one more segment under it. Every successful call must
// be matched by releaseOwner(id).
func acquireOwner() (string, error) {
	owner.mu.Lock()
	defer owner.mu.Unlock()
	if owner.id == "" {
		id, fd, err := takeOwner()
		if err != nil {
			return "", err
		}
		owner.id, owner.fd = id, fd
	}
	owner.segs++
	return owner.id, nil
}

// releaseOwner counts one segment of id as unlinked. After the last one the
// owner file is unlinked and then its lock dropped (LAYOUT.md 1.4: segments
// first, then the owner file).
func releaseOwner(id string) {
	owner.mu.Lock()
	defer owner.mu.Unlock()
	if id != owner.id || owner.segs <= 0 {
		return // cannot happen; never unlink another owner's file
	}
	owner.segs--
	if owner.segs == 0 {
		syscall.Unlink(ownerLockPath(owner.id))
		syscall.Close(owner.fd)
		owner.id, owner.fd = "", -1
	}
}

// takeOwner creates and locks a new owner file: O_EXCL so that it is ours,
// flock LOCK_SH, then a check that the path still names the locked inode (a
// reaper that saw a stale file of the same name may have unlinked it in
// between); if not, it starts over with a new id.
func takeOwner() (string, int, error) {
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		var r [4]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", -1, fmt.Errorf("shmpool: random owner id: %w", err)
		}
		id := strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(r[:])
		path := ownerLockPath(id)
		fd, err := openRetry(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err == syscall.EEXIST {
			lastErr = err
			continue
		}
		if err != nil {
			return "", -1, fmt.Errorf("shmpool: creating owner file %s: %w", path, err)
		}
		for {
			err = syscall.Flock(fd, syscall.LOCK_SH)
			if err != syscall.EINTR {
				break
			}
		}
		if err != nil {
			syscall.Close(fd)
			syscall.Unlink(path)
			return "", -1, fmt.Errorf("shmpool: locking owner file %s: %w", path, err)
		}
		var fst, st syscall.Stat_t
		if err := syscall.Fstat(fd, &fst); err != nil {
			syscall.Close(fd)
			return "", -1, fmt.Errorf("shmpool: owner file %s: %w", path, err)
		}
		if err := syscall.Lstat(path, &st); err != nil || st.Dev != fst.Dev || st.Ino != fst.Ino {
			// Removed (or replaced) by a reaper before we held the lock.
			syscall.Close(fd)
			lastErr = fmt.Errorf("the owner file was replaced while being locked")
			continue
		}
		return id, fd, nil
	}
	return "", -1, fmt.Errorf("shmpool: could not take an owner file in %s: %v", shmDir, lastErr)
}

// segment is one mapped segment this process created (LAYOUT.md 1.5). It is
// not safe for concurrent use; its owner (a lane, a Buffer, a Result)
// serializes access.
type segment struct {
	name     string
	owner    string // the owner id the name carries; "" once unlinked
	kind     uint16
	capacity int
	mem      []byte // the whole mapping: header and region; nil once unmapped
}

// newSegmentName returns shmpool-<owner>-<16 random hex digits>.
func newSegmentName(ownerID string) (string, error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("shmpool: random segment name: %w", err)
	}
	return namePrefix + ownerID + "-" + hex.EncodeToString(r[:]), nil
}

// segmentBytes is the file size of a segment of capacity elements.
func segmentBytes(capacity int) (int, error) {
	const maxInt = int(^uint(0) >> 1)
	if capacity < 0 || capacity > (maxInt-headerSize)/itemSize {
		return 0, fmt.Errorf("shmpool: segment capacity %d out of range", capacity)
	}
	return headerSize + itemSize*capacity, nil
}

// createSegment creates, reserves, maps and initializes a segment of the
// given kind holding capacity elements (LAYOUT.md 1.5). For a data segment
// the header's count is set to count.
func createSegment(kind uint16, capacity, count int) (*segment, error) {
	size, err := segmentBytes(capacity)
	if err != nil {
		return nil, err
	}
	ownerID, err := acquireOwner()
	if err != nil {
		return nil, err
	}
	var (
		name string
		fd   int
	)
	for attempt := 0; ; attempt++ {
		if name, err = newSegmentName(ownerID); err != nil {
			releaseOwner(ownerID)
			return nil, err
		}
		fd, err = openRetry(shmDir+name,
			syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err == nil {
			break
		}
		if err == syscall.EEXIST && attempt < 8 {
			continue
		}
		releaseOwner(ownerID)
		return nil, fmt.Errorf("shmpool: creating segment %s%s: %w", shmDir, name, err)
	}
	fail := func(err error) (*segment, error) {
		syscall.Close(fd)
		syscall.Unlink(shmDir + name)
		releaseOwner(ownerID)
		return nil, err
	}
	if err := reserve(fd, int64(size)); err != nil {
		return fail(fmt.Errorf("shmpool: reserving %d bytes in %s for segment %s: %w", size, shmDir, name, err))
	}
	mem, err := syscall.Mmap(fd, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("shmpool: mapping segment %s (%d bytes): %w", name, size, err))
	}
	syscall.Close(fd) // the mapping keeps the memory
	h := newHeader(kind, uint64(capacity), 0)
	if kind == kindData {
		h.Count = uint64(count)
	}
	encodeHeader(mem, h)
	return &segment{name: name, owner: ownerID, kind: kind, capacity: capacity, mem: mem}, nil
}

func openRetry(path string, flags int, mode uint32) (int, error) {
	for {
		fd, err := syscall.Open(path, flags, mode)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// reserve allocates size bytes for fd the way posix_fallocate does, so that
// a full /dev/shm is reported now rather than as SIGBUS on first touch.
func reserve(fd int, size int64) error {
	for {
		err := syscall.Fallocate(fd, 0, 0, size)
		switch err {
		case nil:
			return nil
		case syscall.EINTR:
			continue
		case syscall.EOPNOTSUPP:
			// Not tmpfs; glibc's posix_fallocate would write the blocks.
			// Setting the size is the best pure-Go approximation.
			return syscall.Ftruncate(fd, size)
		}
		return err
	}
}

// floats returns the data region as float64 values.
func (s *segment) floats() []float64 {
	if s.capacity == 0 {
		return []float64{}
	}
	return unsafe.Slice((*float64)(unsafe.Pointer(&s.mem[headerSize])), s.capacity)
}

// ints returns the result region as int64 indices.
func (s *segment) ints() []int64 {
	if s.capacity == 0 {
		return []int64{}
	}
	return unsafe.Slice((*int64)(unsafe.Pointer(&s.mem[headerSize])), s.capacity)
}

// setCount writes the data header's count.
func (s *segment) setCount(n int) {
	binary.LittleEndian.PutUint64(s.mem[hdrOffCount:], uint64(n))
}

// header decodes the segment's current header.
func (s *segment) header() segmentHeader { return decodeHeader(s.mem) }

// close unlinks and unmaps the segment.
func (s *segment) close() error {
	return errors.Join(s.unlink(), s.unmap())
}

// unlink removes the segment's name, leaving the mapping in place, and
// releases its hold on the owner. A name that is already gone is not an
// error. Calling it again does nothing.
func (s *segment) unlink() error {
	if s.owner == "" {
		return nil
	}
	err := syscall.Unlink(shmDir + s.name)
	releaseOwner(s.owner)
	s.owner = ""
	if err != nil && err != syscall.ENOENT {
		return fmt.Errorf("shmpool: unlinking segment %s: %w", s.name, err)
	}
	return nil
}

// unmap releases the mapping, leaving the name in place. Calling it again
// does nothing.
func (s *segment) unmap() error {
	if s.mem == nil {
		return nil
	}
	err := syscall.Munmap(s.mem)
	s.mem = nil
	if err != nil {
		return fmt.Errorf("shmpool: unmapping segment %s: %w", s.name, err)
	}
	return nil
}
