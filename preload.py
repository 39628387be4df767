"""Command-line flags for the WebUI, added before it parses its arguments (read as shared.cmd_opts.sagemaker_*).

The WebUI loads this file by path, without the extension on sys.path: it must import nothing of ours.
"""


def preload(parser):
    group = parser.add_argument_group("Amazon SageMaker (sd-webui-sagemaker)")
    group.add_argument("--sagemaker-region", type=str, default=None,
                       help="AWS region for the Amazon SageMaker tab; beats AWS_REGION and the WebUI setting")
    group.add_argument("--sagemaker-profile", type=str, default=None,
                       help="AWS profile (from ~/.aws/config) for the Amazon SageMaker tab; beats AWS_PROFILE")
    group.add_argument("--sagemaker-bucket", type=str, default=None,
                       help="S3 bucket for models and datasets; beats SD_SAGEMAKER_BUCKET "
                            "(default: sd-webui-sagemaker-<account id>-<region>)")
    group.add_argument("--sagemaker-role-arn", type=str, default=None,
                       help="SageMaker execution role ARN for new endpoints; beats SD_SAGEMAKER_ROLE_ARN")
    group.add_argument("--sagemaker-image-uri", type=str, default=None,
                       help="inference container image URI for new endpoints; beats SD_SAGEMAKER_IMAGE_URI")
    group.add_argument("--sagemaker-allow-private-urls", action="store_true",
                       help="let 'from URL' download from loopback and private network addresses")
