module github.com/shmpool/shmpool/host_adapters/go

go 1.22
