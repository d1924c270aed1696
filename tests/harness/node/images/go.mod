module tidb-ebs-backup/harness/node-images

go 1.24
