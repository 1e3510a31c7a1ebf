#!/usr/bin/env bash
# Build the three images, push them to ECR, deploy the CloudFormation stack
# and print the service's URL.
#
#   deploy/deploy.sh VPC_ID PUBLIC_SUBNETS PRIVATE_SUBNETS [Key=Value ...]
#
# PUBLIC_SUBNETS and PRIVATE_SUBNETS are comma-separated subnet ids; extra
# Key=Value pairs are template parameters (see deploy/url2png.yaml), e.g.
# CertificateArn=arn:aws:acm:… WorkerMaxTasks=20. Needs docker and the AWS
# CLI with credentials; STACK (default url2png) names the stack, TAG
# (default the git commit) tags the images.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$#" -ge 3 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
vpc="$1" public="$2" private="$3"
shift 3
stack="${STACK:-url2png}"
tag="${TAG:-$(git rev-parse --short HEAD)}"
region="$(aws configure get region || true)"
region="${AWS_REGION:-${region:-us-east-1}}"
account="$(aws sts get-caller-identity --query Account --output text)"
registry="$account.dkr.ecr.$region.amazonaws.com"

aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
declare -A images
for target in producer worker scaler; do
  repo="url2png-$target"
  aws ecr describe-repositories --repository-names "$repo" --region "$region" >/dev/null 2>&1 \
    || aws ecr create-repository --repository-name "$repo" --image-scanning-configuration scanOnPush=true --region "$region" >/dev/null
  image="$registry/$repo:$tag"
  docker build -f docker/Dockerfile --target "$target" -t "$image" .
  docker push "$image"
  images[$target]="$image"
done

aws cloudformation deploy \
  --region "$region" \
  --stack-name "$stack" \
  --template-file deploy/url2png.yaml \
  --capabilities CAPABILITY_IAM \
  --parameter-overrides \
    VpcId="$vpc" PublicSubnetIds="$public" PrivateSubnetIds="$private" \
    ProducerImage="${images[producer]}" WorkerImage="${images[worker]}" ScalerImage="${images[scaler]}" \
    "$@"

aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
  --query "Stacks[0].Outputs[?OutputKey=='ServiceUrl'].OutputValue" --output text
